"""Decode order and metadata, checked against FFmpeg's own command-line decode.

Clips whose presentation times come out of order while the frames come in
display order (an AVI with packed B-frames, H.264 with B-frames in AVI, an MP4
remuxed from it with the scrambled stamps) must be sampled frame-exact as
``ffmpeg`` itself decodes them (its best-effort timestamps); ``video.frames`` and
``video.fps`` report what was decoded, the header's claims under their own names.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from monitor.core.embed import Embedder
from monitor.core.pipeline import score_file
from monitor.media.decode_file import probe, sample_file
from monitor.media.decode_info import normalise_rotation
from monitor.types import Sample

from .hostile import has_libxvid

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg CLI")

PACKED_AVI = "real__mmaction2__test.avi"


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True, timeout=120)


def ffmpeg_frames(path: Path) -> tuple[list[float], np.ndarray]:
    """Every frame as the ffmpeg CLI decodes it (rgb24) and its best-effort time."""
    probed = json.loads(subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
         "frame=best_effort_timestamp,width,height:stream=time_base", "-of", "json", str(path)],
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout)
    tb = Fraction(probed["streams"][0]["time_base"])
    width, height = int(probed["frames"][0]["width"]), int(probed["frames"][0]["height"])
    stamps: list[int] = []
    for f in probed["frames"]:
        if "best_effort_timestamp" in f:
            stamps.append(int(f["best_effort_timestamp"]))
        else:  # the decoder's last frame can come without a time: one step after the previous
            stamps.append(2 * stamps[-1] - stamps[-2])
    times = [float(ts * tb) for ts in stamps]
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-noautorotate", "-i", str(path), "-fps_mode", "passthrough",
         "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        check=True, capture_output=True, timeout=120,
    ).stdout
    frames = np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)
    assert len(frames) == len(times)
    return times, frames


def assert_frame_exact(path: Path, clock: Path | None = None) -> str:
    """Sample at every frame time ffmpeg reports: each sample must be that very frame.

    ``clock``: take the times from ffmpeg's decode of that file instead (the same
    stream in another container)."""
    times, frames = ffmpeg_frames(path)
    if clock is not None:
        times = ffmpeg_frames(clock)[0]
    info = probe(path)
    got: list[Sample] = []
    out = sample_file(path, {"all": [t - info.origin_s for t in times]},
                      lambda _n, s: got.append(s), info=info)
    assert len(got) == len(times)
    wrong = []
    for k, s in enumerate(got):
        lo = max(0, k - 3)
        near = frames[lo : k + 4].astype(np.int16)
        mad = np.abs(near - s.frame.rgb.astype(np.int16)).mean(axis=(1, 2, 3))
        best = lo + int(mad.argmin())
        if best != k or mad[k - lo] > 1.0 or abs(s.frame.pts_s - times[k]) > 1e-6:
            wrong.append((k, best, round(float(mad[k - lo]), 2)))
    assert not wrong, f"{path.name}: {len(wrong)}/{len(got)} not ffmpeg's frame: {wrong[:8]}"
    assert not any(s.repeated for s in got[1:])
    assert out.frames == len(times)
    return out.timestamps


def test_packed_b_frames_avi_is_sampled_as_ffmpeg_decodes_it(shared_clips: Path) -> None:
    assert assert_frame_exact(shared_clips / PACKED_AVI) == "dts"


@pytest.fixture(scope="module")
def packed_avi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MPEG-4 Part 2 AVI with packed B-frames, like the shared clip: Xvid packs each
    B-frame into the chunk of the P-frame after it and fills the next chunk with a
    not-coded VOP of a few bytes (the pattern checked here, as ffprobe lists it)."""
    if not has_libxvid():
        pytest.skip("the ffmpeg CLI has no libxvid encoder (Debian's ffmpeg has it; CI does)")
    path = tmp_path_factory.mktemp("packed") / "packed.avi"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=96x64:rate=25", "-t", "4", "-c:v", "libxvid",
           "-bf", "2", str(path))
    sizes = [int(x) for x in subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=size",
         "-of", "csv=p=0", str(path)], check=True, capture_output=True, text=True, timeout=60,
    ).stdout.split()]
    assert sum(1 for n in sizes if n <= 8) >= 10, f"not packed: packet sizes {sizes[:12]}"
    return path


def test_made_packed_b_frames_avi_is_sampled_as_ffmpeg_decodes_it(packed_avi: Path) -> None:
    assert assert_frame_exact(packed_avi) == "dts"


def test_made_packed_avi_centre_window_has_no_spurious_repeat(
    packed_avi: Path, tiny_embedder: Embedder
) -> None:
    result = score_file(packed_avi, tiny_embedder)
    assert result.centre.repeated_samples == 0
    assert result.info.timestamps == "dts"


def test_made_out_of_order_clips_are_sampled_as_ffmpeg_decodes_them(tmp_path: Path) -> None:
    # H.264 with B-frames in AVI (no pts in the container) and that stream remuxed to MP4
    # with its scrambled stamps: frames in display order, pts out of order
    avi, mp4 = tmp_path / "bframes.avi", tmp_path / "scrambled.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=96x64:rate=30", "-t", "2", "-c:v", "libx264",
           "-bf", "3", "-pix_fmt", "yuv420p", str(avi))
    ffmpeg("-i", str(avi), "-c", "copy", str(mp4))
    assert assert_frame_exact(avi) == "dts"
    # ffmpeg itself trusts the MP4's first three pts before it sees one go backwards and
    # the last two (no dts): the clock is its decode of the same stream from the AVI
    assert assert_frame_exact(mp4, clock=avi) == "dts"
    # an ordinary clip keeps its presentation times
    plain = tmp_path / "plain.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=96x64:rate=25", "-t", "1", "-c:v", "libx264",
           "-bf", "2", "-pix_fmt", "yuv420p", str(plain))
    assert assert_frame_exact(plain) == "pts"


def test_packed_avi_centre_window_has_no_spurious_repeat(
    shared_clips: Path, tiny_embedder: Embedder
) -> None:
    result = score_file(shared_clips / PACKED_AVI, tiny_embedder)
    assert result.centre.repeated_samples == 0
    assert result.info.timestamps == "dts"


def test_frames_and_fps_are_what_was_decoded(tmp_path: Path) -> None:
    src, cut = tmp_path / "src.mp4", tmp_path / "edit-list.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=96x64:rate=25", "-t", "8", "-c:v", "libx264",
           "-g", "200", "-bf", "2", "-pix_fmt", "yuv420p", str(src))
    # a stream copy cut mid-GOP: the MP4 keeps every packet and an edit list shows some
    ffmpeg("-ss", "2.3", "-i", str(src), "-t", "3.2", "-c", "copy", str(cut))
    shown = int(subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_frames", "-show_entries",
         "stream=nb_read_frames", "-of", "csv=p=0", str(cut)],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout.strip())
    info = sample_file(cut, {"c": [0.0, 0.5, 1.0]}, lambda _n, _s: None)
    assert info.frames_header is not None and info.frames_header > shown
    assert info.frames == shown
    assert info.fps == pytest.approx(25.0, abs=1e-3)
    assert info.fps_header == pytest.approx(25.0, abs=0.5)
    assert info.as_dict()["frames"] == shown and "frames_header" in info.as_dict()


def test_rotation_is_normalised(tmp_path: Path) -> None:
    src, rot = tmp_path / "src.mp4", tmp_path / "rot.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=96x64:rate=25", "-t", "1", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", str(src))
    ffmpeg("-i", str(src), "-c", "copy", "-metadata:s:v:0", "rotate=270", str(rot))
    got: list[Sample] = []
    info = sample_file(rot, {"c": [0.0]}, lambda _n, s: got.append(s))
    assert info.rotation_deg == 270  # FFmpeg says -90
    assert (info.width, info.height) == (64, 96)
    # the pixels are ffmpeg's own autorotated frame
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(rot), "-frames:v", "1", "-f", "rawvideo",
         "-pix_fmt", "rgb24", "-"], check=True, capture_output=True, timeout=60,
    ).stdout
    first = np.frombuffer(raw, np.uint8).reshape(96, 64, 3)
    assert np.abs(first.astype(int) - got[0].frame.rgb).mean() < 1.0
    assert [normalise_rotation(d) for d in (-90, -180, 90, 360, -270, 0)] == [
        270, 180, 90, 0, 90, 0
    ]


def test_time_guess_follows_ffmpeg_best_effort_rule() -> None:
    """Scrambled pts with sane dts: decode-order times; frames without any dts (a live
    input) keep their pts even after they went backwards (a camera's clock reset), as
    FFmpeg's best-effort timestamp does, instead of counting frames at a guessed rate."""
    from monitor.media.decode_guard import TimeGuess

    def times(stamps: list[tuple[int | None, int | None]]) -> list[float]:
        guess = TimeGuess(0.5, 0.04)
        return [t for _, t in guess.timed(stamps, lambda s: s, 0)]

    packed = [(1, 0), (2, 1), (4, 2), (3, 3), (5, 4), (7, 5), (6, 6)]
    assert times(packed)[3:] == [1.5, 2.0, 2.5, 3.0]  # dts from the first pts fault on
    live = [(10, None), (11, None), (12, None), (3, None), (4, None), (5, None)]
    assert times(live) == [5.0, 5.5, 6.0, 1.5, 2.0, 2.5]
