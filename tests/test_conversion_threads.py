"""The conversion threads' footprint: a fixed number of threads, none added by use.

serve's thread count is a leak detector (tests/test_reconnect_resources.py, the soak), so
converting frames must not add threads: PyAV's default swscale context gives every
converting thread its own team of slice threads, and a ThreadPoolExecutor starts its
threads one burst at a time.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import av
import numpy as np

from monitor.live.conversion import conversion_pool
from monitor.media.decode import frame_to_rgb, frame_to_small_rgb, new_scaler

from .media import write_clip


def os_threads() -> int:
    """This process's threads, native ones included (FFmpeg's pools)."""
    return len(os.listdir("/proc/self/task"))


def test_conversion_pool_starts_every_thread_at_once() -> None:
    def convert_threads() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name.startswith("restrav-convert")}

    others = convert_threads()  # other tests' engines may still have theirs
    pool = conversion_pool(4, single_threaded=False)
    try:
        assert len(convert_threads() - others) == 4
        before = os_threads()
        # a burst wider than the pool finds every thread already there
        assert sorted(pool.map(lambda i: i * 2, range(32))) == [i * 2 for i in range(32)]
        assert os_threads() == before
    finally:
        pool.shutdown(wait=True)


def test_converting_frames_adds_no_threads(tmp_path: Path) -> None:
    clip = tmp_path / "c.mp4"
    write_clip(clip, n_frames=6, size=(320, 240))
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        frames = list(container.decode(stream))
    pool = conversion_pool(2, single_threaded=False)
    try:
        before = os_threads()
        scalers = threading.local()

        def both(frame: av.VideoFrame) -> tuple[np.ndarray, np.ndarray]:
            if not hasattr(scalers, "s"):
                scalers.s = new_scaler()
            return frame_to_rgb(frame), frame_to_small_rgb(frame, 160, scalers.s)

        out = list(pool.map(both, frames))
        assert out[0][0].shape == (240, 320, 3) and out[0][1].shape == (120, 160, 3)
        # with PyAV's automatic swscale threads each thread's scaler started a team here
        assert os_threads() == before
    finally:
        pool.shutdown(wait=True)
