"""Reconnects leave nothing behind: serve's thread count returns to its baseline.

A real rtsp-server-perl, a real ffmpeg publisher stopped and restarted N times,
a real `restrav serve` reading over UDP. Before the fix each reconnect left
the dead connection's decoder threads (FFmpeg frame threads), scaler threads
and frame buffers alive in a reference cycle until the cyclic garbage
collector ran: threads grew by about five per reconnect (19 -> 64 after 30).
serve runs with the cyclic collector disabled, so the test cannot pass by luck
of a collection. The 50-restart version with RSS figures is
tests/chaos/test_rtsp_restarts.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .liveproc import Serve, one_camera, wait_until

pytestmark = pytest.mark.slow

RECONNECTS = 3


def test_threads_return_to_baseline_after_reconnects(tmp_path: Path, tiny_model_dir: Path) -> None:
    srv, pub, cfg = one_camera(tmp_path)
    serve = Serve(tmp_path, tiny_model_dir, {**cfg, "sinks": {"stdout": True}}, gc_off=True)
    try:
        serve.start()
        wait_until(lambda: serve.state("cam") == "running", 120, "the stream running")
        baseline = 0
        for _ in range(10):  # warm (pools exist); the most seen while frames flow
            baseline = max(baseline, serve.threads())
            time.sleep(0.3)
        for i in range(RECONNECTS):
            pub.kill()
            wait_until(lambda: serve.state("cam") in ("reconnecting", "starting"), 60,
                       "the stream reconnecting")
            pub.start()
            wait_until(lambda: serve.state("cam") == "running", 60, "running again")
            # the new connection has its own threads; the old one's must be gone
            wait_until(lambda: serve.threads() <= baseline, 30,
                       f"threads back to {baseline} after reconnect {i + 1} "
                       f"(now {serve.threads()}: {serve.thread_names()})")
        assert serve.api("/streams/cam")["reconnects"] >= RECONNECTS
        assert serve.stop() == 0
    finally:
        serve.kill()
        pub.kill()
        srv.stop()
    assert "Traceback" not in serve.log()
