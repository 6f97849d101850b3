"""Hostile inputs that are not (quite) video, generated from real clips.

:func:`make_corpus` writes them into a folder and returns a :class:`Case` per
file: what it is and which answer codes are acceptable. Crafted cases have one
expected code; mutated real clips (truncations, bit flips) may decode, or fail
with any documented input error code, but never ``internal`` and never hang.
``full=False`` gives a small representative subset for the default test run;
``full=True`` the chaos corpus (>= 300 files). Both include the
:data:`UNKNOWN_CODEC` cases: a video track in a codec FFmpeg has no decoder for
is ``decode_error``, never ``internal``.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# answers a damaged but otherwise ordinary file may get
DAMAGED = frozenset(
    {"ok", "decode_error", "too_short", "no_video_stream", "too_large", "unsupported_source",
     "empty"}
)
DOCUMENTED = DAMAGED | {"not_found", "not_a_file", "timeout"}

SLOW_OR_ALIKE = frozenset({"1x1", "0.1fps", "240fps", "444", "jpeg", "huger-declared"})
"""Crafted cases left out of the default run's subset (slower, or like another one)."""

UNKNOWN_CODEC = frozenset({"unknown-codec-mkv", "unknown-fourcc-avi"})
"""Cases whose video track is in a codec FFmpeg cannot decode (no codec context)."""


@dataclass(frozen=True)
class Case:
    """One hostile file and the answer codes that are right for it (``ok``: scored)."""

    name: str
    path: Path
    codes: frozenset[str]


def ffmpeg(*args: str) -> None:
    """Run the ffmpeg CLI (an encoder we did not write) quietly."""
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True, timeout=120,
                   stdin=subprocess.DEVNULL)


def _lavfi(out: Path, source: str, *codec: str, seconds: float = 2.0) -> Path:
    ffmpeg("-f", "lavfi", "-i", source, "-t", str(seconds), *codec, str(out))
    return out


def _flip(data: bytes, rng: random.Random, lo: int, hi: int, n_bits: int) -> bytes:
    b = bytearray(data)
    hi = min(hi, len(b))
    for _ in range(n_bits):
        i = rng.randrange(lo, max(lo + 1, hi))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def _crafted(d: Path) -> list[Case]:
    one = frozenset
    cases: list[Case] = []

    def add(name: str, path: Path, *codes: str) -> None:
        cases.append(Case(name, path, one(codes)))

    x264 = ("-c:v", "libx264", "-preset", "ultrafast")
    add("one-frame", _lavfi(d / "one-frame.mp4", "testsrc2=size=64x48:rate=25", *x264,
                            "-frames:v", "1"), "too_short")
    noise = "noise=alls=60:allf=t"
    add("1x1", _lavfi(d / "1x1.mkv", f"color=c=gray:size=1x1:rate=25,format=yuv444p,{noise}",
                       "-c:v", "ffv1"), "ok")
    add("16000x16", _lavfi(d / "16000x16.mkv", f"color=c=gray:size=16000x16:rate=25,{noise}",
                           "-c:v", "ffv1",
                           seconds=1.0), "ok")
    add("0.1fps", _lavfi(d / "slow.mp4", "testsrc2=size=64x48:rate=0.1", *x264, seconds=30.0),
        "ok")
    add("240fps", _lavfi(d / "fast.mp4", "testsrc2=size=64x48:rate=240", *x264, seconds=1.0),
        "ok")
    add("10bit", _lavfi(d / "10bit.mp4", "testsrc2=size=64x48:rate=25", *x264,
                        "-pix_fmt", "yuv420p10le"), "ok")
    add("444", _lavfi(d / "444.mp4", "testsrc2=size=64x48:rate=25", *x264,
                      "-pix_fmt", "yuv444p"), "ok")
    add("vfr", _lavfi(d / "vfr.mkv", "testsrc2=size=64x48:rate=30", *x264,
                      "-vf", "setpts='N/30/TB+if(gt(mod(N,7),3),0.2/TB,0)'",
                      "-fps_mode", "passthrough", seconds=3.0), "ok")
    add("audio-only", _lavfi(d / "audio.m4a", "sine=frequency=440:sample_rate=8000",
                             "-c:a", "aac"), "no_video_stream")
    add("png", _lavfi(d / "image.png", "testsrc2=size=64x48", "-frames:v", "1"), "too_short")
    add("jpeg", _lavfi(d / "image.jpg", "testsrc2=size=64x48", "-frames:v", "1"), "too_short")
    (d / "text.mp4").write_text("not a video\n" * 50)
    add("text", d / "text.mp4", "decode_error")
    (d / "empty.mp4").write_bytes(b"")
    add("empty", d / "empty.mp4", "empty")
    os.mkfifo(d / "fifo.mp4")
    add("fifo", d / "fifo.mp4", "not_a_file")
    (d / "loop-a.mp4").symlink_to(d / "loop-b.mp4")
    (d / "loop-b.mp4").symlink_to(d / "loop-a.mp4")
    add("symlink-loop", d / "loop-a.mp4", "not_a_file")
    # a huge declared size: a YUV4MPEG header of 100000 x 100000 over a few bytes
    (d / "huge.y4m").write_bytes(b"YUV4MPEG2 W12000 H12000 F25:1 Ip C420\nFRAME\n" + b"\0" * 64)
    add("huge-declared", d / "huge.y4m", "too_large")
    # so huge that FFmpeg itself refuses the header
    (d / "huger.y4m").write_bytes(
        b"YUV4MPEG2 W100000 H100000 F25:1 Ip C420\nFRAME\n" + b"\0" * 64
    )
    add("huger-declared", d / "huger.y4m", "too_large", "decode_error")
    # playlists, concat lists and SDP make FFmpeg open what they name: a FIFO here
    os.mkfifo(d / "segment.ts")
    (d / "fifo.m3u8").write_text(
        "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\nsegment.ts\n#EXT-X-ENDLIST\n"
    )
    add("hls-fifo-segment", d / "fifo.m3u8", "unsupported_source")
    (d / "list.ffconcat").write_text(f"ffconcat version 1.0\nfile '{d / 'segment.ts'}'\n")
    add("ffconcat", d / "list.ffconcat", "unsupported_source")
    (d / "session.sdp").write_text(
        "v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\n"
        "m=video 5004 RTP/AVP 96\na=rtpmap:96 H264/90000\n"
    )
    add("sdp", d / "session.sdp", "unsupported_source")
    return cases


def _bad_metadata_avi(d: Path, src: Path) -> Case:
    """An AVI whose INFO title is not UTF-8 (a bit-flipped tag)."""
    out = d / "bad-utf8-title.avi"
    ffmpeg("-i", str(src), "-c", "copy", "-metadata", "title=ABCDEFGH", str(out))
    data = out.read_bytes()
    i = data.index(b"ABCDEFGH")
    out.write_bytes(data[:i] + b"\xff\xfe\xc3(\x80\xbf\xf0\x28" + data[i + 8 :])
    return Case("bad-utf8-metadata", out, frozenset({"ok"}))


def _unknown_codec_mkv(d: Path) -> Case:
    """A Matroska file whose video track's codec id (``V_MPEG4/ISO/AVC``) is one that
    no FFmpeg knows: PyAV gives the stream no codec context."""
    out = _lavfi(d / "unknown-codec.mkv", "testsrc2=size=96x64:rate=25", "-c:v", "libx264",
                 "-preset", "ultrafast", seconds=3.0)
    out.write_bytes(out.read_bytes().replace(b"V_MPEG4/ISO/AVC", b"V_QQQQQ/ISO/AVC", 1))
    return Case("unknown-codec-mkv", out, frozenset({"decode_error"}))


def _unknown_fourcc_avi(d: Path, src: Path | None) -> Case:
    """An AVI whose video FourCCs (the stream header's handler and the bitmap header's
    compression) name no codec FFmpeg knows: 8 bytes of header bit flips. ``src`` is
    an AVI (the shared MPEG-4 Part 2 clip), or None to make one."""
    if src is None:
        src = _lavfi(d / "xvid-src.avi", "testsrc2=size=96x64:rate=25", "-c:v", "mpeg4",
                     "-vtag", "XVID", seconds=3.0)
    data = bytearray(src.read_bytes())
    strh, strf = data.index(b"strh"), data.index(b"strf")
    for at in (strh + 12, strf + 24):  # fccHandler after "vids"; biCompression
        data[at : at + 4] = b"QQQQ"
    out = d / "unknown-fourcc.avi"
    out.write_bytes(bytes(data))
    return Case("unknown-fourcc-avi", out, frozenset({"decode_error"}))


def unknown_codec(d: Path, avi: Path | None) -> list[Case]:
    """The :data:`UNKNOWN_CODEC` cases, written under ``d`` (``avi``: an AVI to alter,
    or None to make one)."""
    return [_unknown_codec_mkv(d), _unknown_fourcc_avi(d, avi)]


def _resolution_change(d: Path) -> Case:
    """An H.264 stream whose header says 64x48 and whose later frames are 2048x1536."""
    a = _lavfi(d / "rc-a.h264", "testsrc2=size=64x48:rate=25", "-c:v", "libx264",
               "-preset", "ultrafast", seconds=1.0)
    b = _lavfi(d / "rc-b.h264", "testsrc2=size=2048x1536:rate=25", "-c:v", "libx264",
               "-preset", "ultrafast", "-crf", "51", seconds=1.0)
    out = d / "resolution-change.h264"
    out.write_bytes(a.read_bytes() + b.read_bytes())
    a.unlink()
    b.unlink()
    # with decode.max_pixels = 1e6 (the corpus runs use it), the second part is too large
    return Case("resolution-change", out, frozenset({"too_large"}))


def has_libxvid() -> bool:
    """Whether the ffmpeg CLI can write Xvid (MPEG-4 Part 2 with packed B-frames)."""
    out = subprocess.run(["ffmpeg", "-hide_banner", "-encoders"], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    return " libxvid " in out


def _stand_in(name: str, d: Path) -> Path:
    """A clip made here with the trait of the shared clip ``name`` (its container and
    codec; for the AVI, MPEG-4 Part 2 with packed B-frames where ffmpeg has libxvid)."""
    src = "testsrc2=size=96x64:rate=25"
    if name.endswith(".avi"):
        codec = ("-c:v", "libxvid", "-bf", "2") if has_libxvid() else (
            "-c:v", "mpeg4", "-bf", "2", "-vtag", "XVID")
        return _lavfi(d / "made.packed.avi", src, *codec, seconds=3.0)
    if name.endswith(".gif"):
        return _lavfi(d / "made.gif", "testsrc2=size=96x64:rate=10", "-c:v", "gif", seconds=3.0)
    return _lavfi(d / "made.part0.mp4", src, "-c:v", "libx264", "-preset", "ultrafast",
                  "-pix_fmt", "yuv420p", seconds=3.0)


def sources(shared_clips: Path, d: Path) -> list[Path]:
    """Real clips to mutate: three shared clips of different containers, plus one made.
    A shared clip that is absent (a clone without ../shared/clips) is replaced by a clip
    made with its container and codec, so that the corpus is whole everywhere."""
    picks = [shared_clips / n if (shared_clips / n).is_file() else _stand_in(n, d) for n in (
        "real__mmaction2__test.avi", "real__mmaction2__part_0.mp4",
        "ai__open_sora__sora_16x240x426_26.gif",
    )]
    mkv = _lavfi(d / "src.mkv", "testsrc2=size=96x64:rate=25", "-c:v", "libx264", "-preset",
                 "ultrafast", "-bf", "2", seconds=3.0)
    return [*picks, mkv]


def _mutations(src: Path, d: Path, rng: random.Random, n_trunc: int, n_flip: int) -> list[Case]:
    data = src.read_bytes()
    stem, ext = src.stem[:24], src.suffix
    cases: list[Case] = []
    offsets = sorted({*rng.sample(range(1, min(4096, len(data))), min(n_trunc // 2, 100)),
                      *(len(data) * k // (n_trunc - n_trunc // 2 + 1)
                        for k in range(1, n_trunc - n_trunc // 2 + 1))})
    for off in offsets[:n_trunc]:
        p = d / f"{stem}.trunc{off}{ext}"
        p.write_bytes(data[:off])
        cases.append(Case(f"truncate@{off}", p, DAMAGED))
    for k in range(n_flip):
        header = k % 2 == 0
        lo, hi = (0, 1024) if header else (1024, len(data))
        p = d / f"{stem}.flip{'H' if header else 'P'}{k}{ext}"
        p.write_bytes(_flip(data, rng, lo, hi, rng.choice((1, 4, 32))))
        cases.append(Case(f"bitflip-{'header' if header else 'payload'}-{k}", p, DAMAGED))
    return cases


def make_corpus(d: Path, shared_clips: Path, full: bool, seed: int = 14) -> list[Case]:
    """Write the hostile corpus under ``d`` (see the module docstring)."""
    if shutil.which("ffmpeg") is None:
        raise RuntimeError("the hostile corpus needs the ffmpeg CLI")
    d.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    cases = _crafted(d)
    srcs = sources(shared_clips, d)
    avi = next((s for s in srcs if s.suffix == ".avi"), srcs[-1])
    cases.append(_bad_metadata_avi(d, avi))
    cases.append(_resolution_change(d))
    cases += unknown_codec(d, avi if avi.suffix == ".avi" else None)
    n_trunc, n_flip = (36, 40) if full else (1, 1)
    for src in srcs if full else srcs[:1]:
        cases += _mutations(src, d, rng, n_trunc, n_flip)
    if not full:
        cases = [c for c in cases if c.name not in SLOW_OR_ALIKE]
    return cases


__all__ = ["DAMAGED", "DOCUMENTED", "UNKNOWN_CODEC", "Case", "has_libxvid", "make_corpus",
           "sources", "unknown_codec"]
