"""Helpers for the clip-queue tests: bad inputs of every kind, an in-process worker,
a loopback HTTP server, polling."""

from __future__ import annotations

import functools
import http.server
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import av
import numpy as np
import redis
from prometheus_client import CollectorRegistry

from monitor.config import QueueSettings
from monitor.media.fetch import SourcePolicy
from monitor.metrics import QueueMetrics
from monitor.queue import Job, JobOptions, Scorer, Worker, WorkerHooks, enqueue

from .media import write_clip

FAST_QUEUE = dict(
    visibility_timeout_s=1.0,
    heartbeat_interval_s=0.2,
    reclaim_interval_s=0.2,
    block_ms=100,
    max_deliveries=2,
    shutdown_grace_s=5.0,
)


def wait_for(pred: Callable[[], Any], timeout_s: float = 60.0, what: str = "condition") -> Any:
    """Poll ``pred`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def sample(metrics: QueueMetrics, name: str, **labels: str) -> float:
    """A metric's current value on the worker's registry (0 when never set)."""
    value = metrics.registry.get_sample_value(name, labels)
    return float(value) if value is not None else 0.0


def jobs(metrics: QueueMetrics, outcome: str) -> float:
    """restrav_queue_jobs_total{outcome}."""
    return sample(metrics, "restrav_queue_jobs_total", outcome=outcome)


def write_audio_only(path: Path) -> None:
    """An AAC file with no video stream."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=8000)
        for i in range(10):
            f = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
            )
            f.sample_rate = 8000
            f.pts = i * 1024
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)


def make_bad_inputs(d: Path) -> dict[str, tuple[str, str]]:
    """Bad sources of different kinds: name -> (source, expected reason code).

    ``big`` is 320x240, refused when decode.max_pixels is 10,000.
    """
    d.mkdir(parents=True, exist_ok=True)
    good = d / "for-truncation.mp4"
    write_clip(good, fps=30, n_frames=90)
    data = good.read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (d / "empty.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("not a video\n" * 20)
    (d / "folder.mp4").mkdir(exist_ok=True)
    write_clip(d / "one-frame.mp4", fps=30, n_frames=1)
    write_clip(d / "big.mp4", fps=30, n_frames=10, size=(320, 240))
    write_audio_only(d / "audio.m4a")
    return {
        "missing": (str(d / "missing.mp4"), "not_found"),
        "folder": (str(d / "folder.mp4"), "not_a_file"),
        "empty": (str(d / "empty.mp4"), "empty"),
        "text": (str(d / "text.mp4"), "decode_error"),
        "truncated": (str(d / "truncated.mp4"), "decode_error"),
        "audio": (str(d / "audio.m4a"), "no_video_stream"),
        "one_frame": (str(d / "one-frame.mp4"), "too_short"),
        "big": (str(d / "big.mp4"), "too_large"),
        "ftp": ("ftp://example.com/clip.mp4", "unsupported_source"),
        "relative": ("clips/relative.mp4", "unsupported_source"),
    }


@contextmanager
def running_worker(
    client: redis.Redis,
    scorer: Scorer,
    name: str = "t1",
    policy: SourcePolicy | None = None,
    hooks: WorkerHooks | None = None,
    **queue: Any,
) -> Iterator[tuple[Worker, QueueMetrics]]:
    """A Worker running in a thread of this process until the block exits."""
    settings = QueueSettings(**{**FAST_QUEUE, **queue})
    metrics = QueueMetrics(CollectorRegistry())
    worker = Worker(
        client, settings, scorer, metrics, name=name, policy=policy or SourcePolicy(), hooks=hooks
    )
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield worker, metrics
    finally:
        stop.set()
        thread.join(timeout=30)
        assert not thread.is_alive(), "worker did not stop"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve_http(handler: Callable[..., http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """An HTTP server on loopback answering with ``handler``, in threads of this
    process; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def http_server(root: Path) -> Iterator[str]:
    """Serve ``root`` over HTTP on loopback; yields the base URL."""
    with serve_http(functools.partial(_QuietHandler, directory=str(root))) as url:
        yield url


def submit_replying(client: redis.Redis, source: Path, job_id: str, hop: int = 12) -> str:
    """Enqueue a job for ``source`` that replies to ``restrav:replies:{job_id}``."""
    job = Job(job_id=job_id, source=str(source), options=JobOptions(hop=hop),
              reply_to=f"restrav:replies:{job_id}")
    return enqueue(client, job, QueueSettings())


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[BaseException]]:
    """Run ``fn`` in a daemon thread (as a worker's job thread would); the list
    collects what it raised."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # what the job thread would see
            failed.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, failed
