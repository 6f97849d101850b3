"""Hostile files that are not video: a representative subset of the chaos corpus
(tests/hostile.py) through `restrav score` and through the queue, video in a codec
FFmpeg cannot decode, escapes from ``queue.local_roots`` (playlists, a symlink
swapped in a loop), and the bounds checked while decoding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import redis

from monitor import keys
from monitor.config import QueueSettings
from monitor.core.embed import Embedder
from monitor.errors import (
    DecodeError,
    DecodeTimeout,
    InputTooLarge,
    NotEnoughFrames,
    UnsupportedSource,
)
from monitor.media.decode import DecodeLimits, LiveVideo
from monitor.media.decode_file import probe, sample_file
from monitor.media.fetch import SourcePolicy, local_source
from monitor.media.safe_input import DEFAULT_FORMATS, OpenedFile
from monitor.queue import ClipScorer, Job, JobOptions, enqueue, get_result

from .conftest import SHARED_CLIPS
from .hostile import UNKNOWN_CODEC, Case, ffmpeg, make_corpus, unknown_codec
from .media import write_clip
from .queue_helpers import running_worker, wait_for

ROOT = Path(__file__).resolve().parents[1]
MAX_PIXELS = 1_000_000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    # made stand-ins replace the shared clips where they are absent (tests/hostile.py)
    return make_corpus(tmp_path_factory.mktemp("hostile"), SHARED_CLIPS, full=False)


def test_subset_through_restrav_score(corpus: list[Case], tiny_model_dir: Path) -> None:
    assert 10 <= len(corpus) <= 30
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "RESTRAV_DECODE__MAX_PIXELS": str(MAX_PIXELS)}
    proc = subprocess.run(
        [sys.executable, "-m", "workers.cli", "score", "-m", str(tiny_model_dir),
         *(str(c.path) for c in corpus)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 1  # some failed, none crashed
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o["path"] for o in lines] == [str(c.path) for c in corpus]  # one answer each
    wrong = []
    for case, obj in zip(corpus, lines, strict=True):
        code = "ok" if obj["ok"] else obj["error"]["code"]
        if code not in case.codes:
            wrong.append((case.name, code, obj.get("error")))
    assert not wrong, wrong


def test_subset_through_the_queue(
    corpus: list[Case], client: redis.Redis, tiny_embedder: Embedder, tmp_path: Path
) -> None:
    limits = DecodeLimits(max_pixels=MAX_PIXELS, job_timeout_s=120.0)
    scorer = ClipScorer(tiny_embedder, None, limits)
    good = tmp_path / "good.mp4"
    write_clip(good, fps=25, n_frames=50)
    ids = [f"h{i}" for i in range(len(corpus))]
    with running_worker(client, scorer):
        for job_id, case in zip(ids, corpus, strict=True):
            enqueue(client, Job(job_id=job_id, source=str(case.path),
                                options=JobOptions(windows=False)), QueueSettings())
        # the worker still serves an ordinary job after all of them
        enqueue(client, Job(job_id="good", source=str(good)), QueueSettings())
        wait_for(lambda: all(client.exists(keys.result_key(i)) for i in [*ids, "good"]),
                 240, "every hostile job answered")
    wrong = []
    for job_id, case in zip(ids, corpus, strict=True):
        res = get_result(client, job_id)
        assert res is not None
        code = "ok" if res["ok"] else res["error"]["code"]
        if code not in case.codes:
            wrong.append((case.name, code, res.get("error")))
    assert not wrong, wrong
    good_result = get_result(client, "good")
    assert good_result is not None and good_result["ok"] is True
    assert client.hlen(keys.JOBS_ERRORS) == 0  # nothing was an internal error


def _score_cli(model_dir: Path, *paths: Path) -> list[dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "workers.cli", "score", "-m", str(model_dir),
         *(str(p) for p in paths)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.fixture(scope="module")
def unknown_codec_cases(tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    """An MKV whose codec id and an AVI whose FourCCs name no codec FFmpeg knows (the
    AVI is made here; the corpus also alters the shared MPEG-4 AVI the same way)."""
    cases = unknown_codec(tmp_path_factory.mktemp("unknown-codec"), None)
    assert {c.name for c in cases} == UNKNOWN_CODEC
    return cases


def test_unknown_codec_is_a_decode_error_in_restrav_score(
    unknown_codec_cases: list[Case], tiny_model_dir: Path, tmp_path: Path
) -> None:
    good = tmp_path / "good.mp4"
    write_clip(good, fps=25, n_frames=50)
    paths = [c.path for c in unknown_codec_cases]
    *bad, fine = _score_cli(tiny_model_dir, *paths, good)
    assert fine["ok"] is True  # the files after them are still scored
    for case, obj in zip(unknown_codec_cases, bad, strict=True):
        assert obj["path"] == str(case.path) and obj["ok"] is False
        assert obj["error"]["code"] == "decode_error", (case.name, obj["error"])
        # says what is wrong and what to do
        assert "codec this FFmpeg cannot decode" in obj["error"]["message"]
        assert "libx264" in obj["error"]["message"]


def test_unknown_codec_is_a_decode_error_in_the_queue_and_for_streams(
    unknown_codec_cases: list[Case], client: redis.Redis, tiny_embedder: Embedder
) -> None:
    scorer = ClipScorer(tiny_embedder, None, DecodeLimits())
    ids = [f"u{i}" for i in range(len(unknown_codec_cases))]
    with running_worker(client, scorer):
        for job_id, case in zip(ids, unknown_codec_cases, strict=True):
            enqueue(client, Job(job_id=job_id, source=str(case.path),
                                options=JobOptions(windows=False)), QueueSettings())
        wait_for(lambda: all(client.exists(keys.result_key(i)) for i in ids), 120, "answers")
    for job_id, case in zip(ids, unknown_codec_cases, strict=True):
        res = get_result(client, job_id)
        assert res is not None and res["ok"] is False
        assert res["error"]["code"] == "decode_error", (case.name, res["error"])
    assert client.hlen(keys.JOBS_ERRORS) == 0  # answered, not retried as an internal error
    for case in unknown_codec_cases:
        # `restrav serve` file sources and probe choose the stream the same way
        with pytest.raises(DecodeError, match="codec this FFmpeg cannot decode"):
            LiveVideo(str(case.path), description="cam").close()
        with pytest.raises(DecodeError, match="codec this FFmpeg cannot decode"):
            probe(case.path)


def test_deadline_is_checked_on_packets_that_decode_to_no_frame(tmp_path: Path) -> None:
    """An H.264 MKV cut after its only keyframe: 75 packets that decode to no frame, so
    the per-frame checks never run; the job's deadline is still checked on each packet."""
    whole, cut = tmp_path / "whole.mkv", tmp_path / "no-keyframe.mkv"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=96x64:rate=25", "-t", "4", "-c:v", "libx264",
           "-preset", "ultrafast", "-bf", "0", "-g", "1000", "-sc_threshold", "0", str(whole))
    ffmpeg("-i", str(whole), "-ss", "1", "-c", "copy", "-copyinkf", str(cut))
    times = {"c": [0.0, 1.0, 1.9]}
    info = probe(cut)  # the container states duration and start: no packet is read
    with pytest.raises(NotEnoughFrames, match="no decodable video frames"):
        sample_file(cut, times, lambda _n, _s: None, DecodeLimits(), info)
    with pytest.raises(DecodeTimeout):
        sample_file(cut, times, lambda _n, _s: None, DecodeLimits(job_timeout_s=1e-9), info)


def test_bounds_are_checked_while_decoding(tmp_path: Path) -> None:
    clip = tmp_path / "c.mp4"
    write_clip(clip, fps=25, n_frames=50)
    times = {"c": [0.0, 1.0, 1.9]}
    with pytest.raises(DecodeTimeout):
        sample_file(clip, times, lambda _n, _s: None, DecodeLimits(job_timeout_s=1e-9))
    with pytest.raises(InputTooLarge, match="max_rss_bytes"):
        sample_file(clip, times, lambda _n, _s: None, DecodeLimits(max_rss_bytes=1))
    with pytest.raises(InputTooLarge, match="max_frames"):
        sample_file(clip, times, lambda _n, _s: None, DecodeLimits(max_frames=10))


def test_playlists_cannot_reach_outside_local_roots(
    client: redis.Redis, tiny_embedder: Embedder, tmp_path: Path
) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    secret = outside / "secret.mp4"
    write_clip(secret, fps=25, n_frames=50)
    write_clip(root / "inside.mp4", fps=25, n_frames=50)
    playlists = {
        "absolute": f"{secret}",
        "file-url": f"file://{secret}",
        "relative": "../outside/secret.mp4",
    }
    for name, entry in playlists.items():
        (root / f"{name}.m3u8").write_text(
            f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\n{entry}\n#EXT-X-ENDLIST\n"
        )
    (root / "list.ffconcat").write_text(f"ffconcat version 1.0\nfile '{secret}'\n")
    sources = [*(str(root / f"{n}.m3u8") for n in playlists), str(root / "list.ffconcat")]
    scorer = ClipScorer(tiny_embedder, None, DecodeLimits())
    policy = SourcePolicy(local_roots=(root,))
    with running_worker(client, scorer, policy=policy):
        for i, src in enumerate([*sources, str(root / "inside.mp4")]):
            enqueue(client, Job(job_id=f"p{i}", source=src, options=JobOptions(windows=False)),
                    QueueSettings())
        wait_for(lambda: all(client.exists(keys.result_key(f"p{i}")) for i in range(5)), 120,
                 "answers")
    codes = [get_result(client, f"p{i}")["error"]["code"] for i in range(4)]  # type: ignore[index]
    assert codes == ["unsupported_source"] * 4
    inside = get_result(client, "p4")
    assert inside is not None and inside["ok"] is True


def test_symlink_swapped_in_a_loop_never_escapes(tmp_path: Path) -> None:
    """A thread flips a link under the root between an inside and an outside file while
    jobs open it: every open either refuses or reads the inside file, never the outside."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "inside.bin").write_bytes(b"INSIDE" * 10)
    (tmp_path / "outside.bin").write_bytes(b"SECRET" * 10)
    link = root / "clip.mp4"
    link.symlink_to(root / "inside.bin")
    policy = SourcePolicy(local_roots=(root,))
    stop = threading.Event()
    flips = 0

    def swap() -> None:
        nonlocal flips
        targets = [tmp_path / "outside.bin", root / "inside.bin"]
        while not stop.is_set():
            tmp = root / "clip.tmp"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(targets[flips % 2])
            os.replace(tmp, link)  # atomic swap
            flips += 1

    thread = threading.Thread(target=swap, daemon=True)
    thread.start()
    read_inside = refused = 0
    try:
        tries = 0
        while tries < 400 or (not (read_inside and refused) and tries < 50_000):
            tries += 1
            try:
                with local_source(str(link), policy, 10**6) as opened, opened.reader() as f:
                    data = f.read()
            except UnsupportedSource:
                refused += 1
                continue
            assert data.startswith(b"INSIDE"), "read a file outside queue.local_roots"
            read_inside += 1
    finally:
        stop.set()
        thread.join(timeout=10)
    assert flips > 0 and read_inside > 0 and refused > 0


def test_worker_answers_timeout_and_too_large_and_keeps_serving(
    client: redis.Redis, tiny_embedder: Embedder, tmp_path: Path
) -> None:
    clip = tmp_path / "c.mp4"
    write_clip(clip, fps=25, n_frames=50)
    expired = ClipScorer(tiny_embedder, None, DecodeLimits(job_timeout_s=1e-9))
    hungry = ClipScorer(tiny_embedder, None, DecodeLimits(max_rss_bytes=1))
    fine = ClipScorer(tiny_embedder, None, DecodeLimits())

    def scorer(path: OpenedFile, options: JobOptions, shown: str) -> dict[str, Any]:
        pick = {"late": expired, "big": hungry}.get(Path(shown).stem.split("-")[0], fine)
        return pick(path, options, shown)

    for name in ("late-1", "big-1", "ok-1"):
        (tmp_path / f"{name}.mp4").write_bytes(clip.read_bytes())
    with running_worker(client, scorer):
        for name in ("late-1", "big-1", "ok-1"):
            enqueue(client, Job(job_id=name, source=str(tmp_path / f"{name}.mp4"),
                                options=JobOptions(windows=False)), QueueSettings())
        wait_for(lambda: all(client.exists(keys.result_key(n))
                             for n in ("late-1", "big-1", "ok-1")), 120, "answers")
    late, big, ok = (get_result(client, n) for n in ("late-1", "big-1", "ok-1"))
    assert late is not None and late["error"]["code"] == "timeout"
    assert big is not None and big["error"]["code"] == "too_large"
    assert ok is not None and ok["ok"] is True


def test_playlists_are_read_when_configured(tmp_path: Path) -> None:
    segment, playlist = tmp_path / "seg.ts", tmp_path / "list.m3u8"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=size=96x64:rate=25", "-t", "3", "-c:v", "libx264", "-f", "mpegts",
                    str(segment)], check=True, timeout=120)
    playlist.write_text("#EXTM3U\n#EXT-X-TARGETDURATION:3\n#EXTINF:3,\nseg.ts\n#EXT-X-ENDLIST\n")
    with pytest.raises(UnsupportedSource, match="HLS playlist"):
        sample_file(playlist, {"a": [0.0, 1.0]}, lambda _n, _s: None)
    allowed = DecodeLimits(allowed_formats=(*DEFAULT_FORMATS, "hls"))
    got: list[float] = []
    info = sample_file(playlist, {"a": [0.0, 1.0]}, lambda _n, s: got.append(s.time_s), allowed)
    assert info.format == "hls" and got == [0.0, 1.0]


def test_a_file_stream_reads_the_file_it_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`restrav serve` file streams (LiveVideo): the name swapped for a playlist right
    after the check changes nothing: FFmpeg reads the file that was opened and checked,
    and closing the stream closes its descriptor."""
    import monitor.media.decode as decode

    path = tmp_path / "cam.mp4"
    write_clip(path, fps=25, n_frames=10, size=(64, 48))
    write_clip(tmp_path / "other.mp4", fps=25, n_frames=10, size=(96, 80))
    (tmp_path / "swap.m3u8").write_text(
        f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\n{tmp_path / 'other.mp4'}\n"
        "#EXT-X-ENDLIST\n")
    real = decode._refuse_openers

    def check_then_swap(opened: OpenedFile, limits: DecodeLimits) -> bool:
        allowed = real(opened, limits)
        os.replace(tmp_path / "swap.m3u8", path)  # the race, made certain
        return allowed

    monkeypatch.setattr(decode, "_refuse_openers", check_then_swap)
    fds = len(os.listdir("/proc/self/fd"))
    video = decode.LiveVideo(str(path), description="cam")
    try:
        frames = [f for f, _ in video.frames()]
    finally:
        video.close()
    assert (video.info.width, video.info.height) == (64, 48)
    assert len(frames) == 10 and frames[0].width == 64
    assert len(os.listdir("/proc/self/fd")) == fds


def test_closing_twice_never_closes_a_descriptor_reused_since(tmp_path: Path) -> None:
    """A serve file stream closes its input more than once (the stream ends, then it
    is stopped). Only the first close may close the descriptor: the number is reused
    by the next open (an RTSP socket, an API connection, another stream's file), and
    a second os.close() on it broke those ("Socket operation on non-socket", decode
    errors, connections closed without an answer in the 1 h soak)."""
    clip = tmp_path / "a.mp4"
    write_clip(clip, fps=25, n_frames=30, size=(64, 48))

    def reused_after(close: Any, fd: int) -> None:
        close()
        other = os.open(clip, os.O_RDONLY)  # POSIX: the lowest free number
        try:
            assert other == fd, "the test needs the number reused"
            close()  # again
            os.fstat(other)  # still open
        finally:
            os.close(other)

    from monitor.media.safe_input import open_local

    opened = open_local(clip, 1 << 30)
    reused_after(opened.close, opened.fd)
    video = LiveVideo(str(clip), DecodeLimits(), description="cam")
    assert video._file is not None
    reused_after(video.close, video._file.fd)
