"""HLS hands a whole segment over at once: an HLS stream's frame buffer holds a segment's
worth (real ffmpeg-made HLS served over loopback HTTP, opened by the real AVSource)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.media.decode import DecodeLimits
from monitor.media.sources.rtsp import AVSource, burst_frames

from .queue_helpers import http_server


def make_hls(tmp_path: Path, seconds: int, segment_s: int) -> Path:
    """A 64x48 25 fps H.264 HLS rendition made by the real ffmpeg; its folder."""
    out = tmp_path / "hls"
    out.mkdir()
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=25",
         "-t", str(seconds), "-c:v", "libx264", "-g", "25", "-hls_time", str(segment_s),
         "-hls_list_size", "0", "-f", "hls", str(out / "index.m3u8")],
        check=True, timeout=120,
    )
    return out


@pytest.fixture
def hls_url(tmp_path: Path) -> Iterator[str]:
    out = make_hls(tmp_path, seconds=6, segment_s=2)
    with http_server(out) as base:
        yield f"{base}/index.m3u8"


async def test_hls_source_buffers_a_segment(hls_url: str) -> None:
    src = AVSource(hls_url, "cam", DecodeLimits(open_timeout_s=30, read_timeout_s=30),
                   buffer_frames=8, hls_segment_s=6.0)
    await src.start()
    try:
        assert src._buffer_frames == 150  # 6 s at 25 fps, not 8
    finally:
        await src.aclose()


async def test_hls_buffer_follows_the_serve_settings(tmp_path: Path) -> None:
    """Through the opener serve uses: hls_segment_s and hls_buffer_mib from the settings
    (a 1280x720 feed, 1.3 MiB a frame: 16 MiB hold 12 frames of the 50 in 2 s)."""
    from monitor.config import StreamSpec, load_settings
    from monitor.media.sources.base import SourceContext

    out = tmp_path / "hls"
    out.mkdir()
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=1280x720:rate=25",
         "-t", "4", "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-hls_time", "2",
         "-hls_list_size", "0", "-f", "hls", str(out / "index.m3u8")],
        check=True, timeout=120,
    )
    settings = load_settings(serve={"source": {"hls_segment_s": 2, "hls_buffer_mib": 16}})
    source = settings.serve.source
    with http_server(out) as base:
        url = f"{base}/index.m3u8"
        src = await AVSource.open(StreamSpec(id="cam", url=url), SourceContext(url, "cam", source))
        try:
            assert src._buffer_frames == (16 << 20) // (1280 * 720 * 3 // 2) == 12
        finally:
            await src.aclose()


def test_burst_frames_sizes_only_hls() -> None:
    assert burst_frames("rtsp", 25.0, 8, 6.0) == 8
    assert burst_frames("hls", 30.0, 8, 6.0) == 180
    assert burst_frames("hls", None, 8, 6.0) == 150
    assert burst_frames("hls", 120.0, 8, 60.0) == 1024
    assert burst_frames("hls", 1.0, 64, 6.0) == 64


def test_burst_frames_are_bounded_in_memory() -> None:
    frame_1080p = 1920 * 1080 * 3 // 2
    mib = 1 << 20
    # a 6 s segment of 1080p30 is 180 frames, about 534 MiB: within 1 GiB, capped at 256 MiB
    assert burst_frames("hls", 30.0, 8, 6.0, frame_bytes=frame_1080p, max_bytes=1024 * mib) == 180
    assert burst_frames("hls", 30.0, 8, 6.0, frame_bytes=frame_1080p, max_bytes=256 * mib) == 86
    # never below the configured buffer, and no bound without a frame size
    assert burst_frames("hls", 30.0, 8, 6.0, frame_bytes=frame_1080p * 100,
                        max_bytes=16 * mib) == 8
    assert burst_frames("hls", 30.0, 8, 6.0, frame_bytes=0, max_bytes=16 * mib) == 180


async def test_hls_frames_reach_the_reader_at_their_own_pace(tmp_path: Path) -> None:
    """FFmpeg's hls demuxer hands a 4 s segment over at once; the source releases its
    frames at their presentation times, so a segment is not one burst of samples for the
    engine (whose per-stream backlog is 24 samples, about 2 s). Checked as a lower bound
    only: frame i arrives no earlier than its time after frame 0's."""
    out = make_hls(tmp_path, seconds=8, segment_s=4)
    with http_server(out) as base:
        src = AVSource(f"{base}/index.m3u8", "cam",
                       DecodeLimits(open_timeout_s=30, read_timeout_s=30), hls_segment_s=4.0)
        await src.start()
        try:
            frames = [await src.recv() for _ in range(50)]  # 2 s of the first segment
        finally:
            await src.aclose()
    t0, p0 = frames[0].arrival_s, frames[0].pts_s
    early = [(f.index, round(f.arrival_s - t0, 3), round(f.pts_s - p0, 3)) for f in frames
             if f.arrival_s - t0 < (f.pts_s - p0) - 0.01]
    assert not early, early[:5]
