"""`restrav serve` on a laptop: no Redis, a file played in real time, JSON lines on stdout."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from .media import write_clip
from .redisproc import free_port

ROOT = Path(__file__).resolve().parents[1]


def run_serve(cfg: dict[str, Any], tmp_path: Path, done: Callable[[Path], bool],
              at_end: Callable[[], None] = lambda: None) -> Path:
    """Run ``restrav serve`` with ``cfg`` until ``done(stdout file)`` (at most 120 s), call
    ``at_end``, SIGTERM it and check it exits 0; returns the stdout file (JSON lines)."""
    cfg_path = tmp_path / "serve.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    out_path = tmp_path / "out.jsonl"
    with out_path.open("w") as out, (tmp_path / "err.log").open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "serve", "--config", str(cfg_path)],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
            stdout=out, stderr=err,
        )
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not done(out_path):
                time.sleep(0.5)
            at_end()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return out_path


def test_serve_help_explains() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "workers.cli", "serve", "--help"], cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, check=True,
    ).stdout
    for word in ("--config", "--stream", "SIGTERM", "restrav:{stream}:scores", "/metrics"):
        assert word in out


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None,
                    reason="onnxruntime not installed (the cpu-fast extra)")
def test_cpu_runtime_backend_serves_with_batches_of_the_model_batch_size(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """A CPU runtime backend: the conversion threads prepare the model input (torch
    single-threaded) and scores come out; the engine's batch limit is model.batch_size
    (a CPU's full rate is reached there), not the GPU's derived 16-256."""
    clip = tmp_path / "loop.mp4"
    write_clip(clip, fps=25, n_frames=75, size=(64, 48))
    port = free_port()
    cfg = {
        "model": {"ref": str(tiny_model_dir), "device": "cpu", "image_size": 112, "threads": 2,
                  "backend": "onnxruntime", "batch_size": 6, "graph_cache": str(tmp_path)},
        "classifier": {"path": "none"},
        "serve": {"api": {"port": port, "token": "t"},
                  "streams": [{"id": "demo", "url": f"file://{clip}", "loop": True}]},
    }
    metrics: list[str] = []

    def scrape() -> None:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                     headers={"Authorization": "Bearer t"})
        with urllib.request.urlopen(req, timeout=10) as r:
            metrics.append(r.read().decode())

    out_path = run_serve(cfg, tmp_path, lambda p: len(p.read_text().splitlines()) >= 3, scrape)
    scores = [json.loads(x) for x in out_path.read_text().splitlines()]
    assert len(scores) >= 3 and all(len(x["features"]) == 21 for x in scores)
    assert "restrav_engine_batch_limit 6.0" in metrics[0]
    assert 'reason="convert_error"' not in metrics[0]
    # no *_created series (without_created_series), the counters themselves kept
    assert "restrav_stream_frames_decoded_total{" in metrics[0]
    assert "_created" not in metrics[0]


@pytest.mark.slow
def test_serve_stdout_looping_file_then_sigterm_drains(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    clip = tmp_path / "loop.mp4"
    write_clip(clip, fps=25, n_frames=75, size=(64, 48))  # 3 s: every loop is a gap
    cfg = {
        "model": {"ref": str(tiny_model_dir), "device": "cpu", "image_size": 112, "threads": 1},
        "classifier": {"path": "none"},
        "serve": {
            "api": {"port": free_port()},
            "streams": [{"id": "demo", "url": f"file://{clip}", "loop": True}],
            "engine": {"hop": 2},
        },
    }
    def two_segments(out: Path) -> bool:
        return len({json.loads(x)["segment"] for x in out.read_text().splitlines()}) >= 2

    out_path = run_serve(cfg, tmp_path, two_segments)
    lines = [json.loads(x) for x in out_path.read_text().splitlines()]
    assert {x["type"] for x in lines} == {"score"}
    scores = [x for x in lines if x["stream"] == "demo"]
    assert len({x["segment"] for x in scores}) >= 2  # the loop restarted time: a new window
    for a, b in itertools.pairwise(scores):
        if a["segment"] == b["segment"]:
            assert b["seq"] == a["seq"] + 1
            assert b["start_s"] == pytest.approx(a["start_s"] + 2 * 2 / 23, abs=1e-5)  # hop 2
    for x in scores:
        assert x["end_s"] - x["start_s"] == pytest.approx(2.0, abs=1e-5)
        assert x["p_ai"] is None and x["stream"] == "demo"
        assert len(x["features"]) == 21  # no classifier: the features are what is useful
    assert "drained cleanly" in (tmp_path / "err.log").read_text()


@pytest.mark.slow
def test_sigterm_under_overload_exits_with_status_1_not_an_abort(tmp_path: Path) -> None:
    """A backbone far slower than its streams (ViT-S width, 4 layers, 224 px, one thread:
    a few samples/s against 4 x 11.5 Hz), SIGTERM once the engine sheds, a drain
    deadline shorter than one batch: the device thread is inside a forward pass when the
    deadline passes. The process must exit with the documented status 1; the
    interpreter's teardown under that thread aborted it (SIGABRT, "terminate called
    without an active exception": pthread_exit unwinding through torch's C++)."""
    from .conftest import build_tiny_dinov2

    model_dir = build_tiny_dinov2(tmp_path / "slow", hidden=384, layers=4, heads=6)
    clip = tmp_path / "loop.mp4"
    write_clip(clip, fps=25, n_frames=75, size=(64, 48))
    cfg = {
        "model": {"ref": str(model_dir), "device": "cpu", "image_size": 224, "threads": 1,
                  "backend": "torch"},
        "classifier": {"path": "none"},
        "serve": {
            "api": {"port": free_port()},
            "drain_deadline_s": 0.5,
            "streams": [{"id": f"s{i}", "url": f"file://{clip}", "loop": True}
                        for i in range(4)],
        },
    }
    cfg_path = tmp_path / "serve.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    err_path = tmp_path / "err.log"
    with (tmp_path / "out.jsonl").open("w") as out, err_path.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "-v", "serve", "--config", str(cfg_path)],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
            stdout=out, stderr=err,
        )
        try:
            deadline = time.monotonic() + 180
            while "engine overloaded" not in err_path.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, (
                    err_path.read_text()[-3000:])
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            status = proc.wait(timeout=60)  # a hang guard, not a timing
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    log = err_path.read_text()
    assert "terminate called" not in log, log[-3000:]
    assert status == 1, log[-3000:]
    assert "drain incomplete" in log
    assert "device worker is still in a batch" in log
