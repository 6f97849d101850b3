"""Fail cleanly: each mistake a user makes ends in one readable line and a documented exit code
(2 usage, 3 configuration/model/Redis), never a traceback. Drives the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .redisproc import free_port

ROOT = Path(__file__).resolve().parents[1]


def restrav(*args: str, timeout_s: float = 120.0, **env_vars: str
            ) -> subprocess.CompletedProcess[str]:
    """Run ``restrav ARGS`` with this checkout's code (``env_vars`` added to the
    environment); stdin closed, output captured."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **env_vars}
    env.pop("RESTRAV_REDIS__URL", None)
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", *args], cwd=ROOT, env=env, capture_output=True,
        text=True, timeout=timeout_s, stdin=subprocess.DEVNULL,
    )


def assert_one_line(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr


DOWN = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there


@pytest.mark.parametrize(
    "args",
    [
        ("submit", "--redis-url", DOWN, "/tmp/x.mp4"),
        ("worker", "--check", "--redis-url", DOWN),
    ],
)
def test_redis_down_is_one_line_exit_3(args: tuple[str, ...]) -> None:
    proc = restrav(*args)
    assert_one_line(proc, 3, "Redis unavailable", "--redis-url")
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args, word",
    [
        (("submit", "--hop", "0", "/tmp/x.mp4"), "argument --hop: must be 1 or more"),
        (("submit", "--job-id", "bad id!", "/tmp/x.mp4"), "argument --job-id: 'bad id!': use"),
        (("score", "--hop", "0", "/tmp/x.mp4"), "argument --hop: must be 1 or more"),
        (("extract", "--hop", "0", "/tmp/d", "--out", "/tmp/o"),
         "argument --hop: must be 1 or more"),
    ],
)
def test_bad_flag_values_are_usage_errors(args: tuple[str, ...], word: str) -> None:
    # the error line itself, not only the usage text (which names every flag)
    assert_one_line(restrav(*args), 2, word)


def test_serve_on_busy_port_refused_before_model_load(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # the model does not exist: the port must be what is reported (checked first)
        proc = restrav(
            "serve", "--port", str(port), "--model", str(tmp_path / "no-model"), "--stream",
            f"cam={tmp_path / 'x.mp4'}",
        )
    assert_one_line(proc, 3, f"127.0.0.1:{port}", "--port")
    assert "no-model" not in proc.stderr


@pytest.fixture(scope="module")
def truncated_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    broken = tmp_path_factory.mktemp("broken") / "model"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "model.safetensors"
    with weights.open("r+b") as f:
        f.truncate(weights.stat().st_size // 2)  # an interrupted download
    return broken


def test_truncated_weights_exit_3(truncated_model: Path, tmp_path: Path) -> None:
    clip = tmp_path / "x.mp4"
    clip.write_bytes(b"")
    proc = restrav("score", "--model", str(truncated_model), "--device", "cpu", str(clip))
    assert_one_line(proc, 3, "damaged", "Download it again")


def test_doctor_reports_truncated_weights(truncated_model: Path, tiny_model_dir: Path) -> None:
    bad = restrav("doctor", "--json", "--model", str(truncated_model))
    assert bad.returncode == 1, bad.stderr
    model = json.loads(bad.stdout)["model"]
    assert model["exists"] is False and "model.safetensors" in model["damaged"][0]
    good = json.loads(restrav("doctor", "--json", "--model", str(tiny_model_dir)).stdout)
    assert good["model"]["exists"] is True and "damaged" not in good["model"]


def test_doctor_text_is_readable(tiny_model_dir: Path) -> None:
    out = restrav("doctor", "--model", str(tiny_model_dir)).stdout
    assert "{" not in out and "[" not in out, out  # no Python reprs
    assert "\n  torch: " in out and "\n    libavcodec: " in out


def test_serve_refuses_when_no_stream_is_valid(tmp_path: Path) -> None:
    # the model does not exist either: the streams are checked before it is loaded
    proc = restrav(
        "serve", "--port", "0", "--model", str(tmp_path / "no-model"), "--stream", "cam=ftp://x"
    )
    assert_one_line(proc, 3, "no configured stream is valid", "cam:", "ftp")


def serve_until(tmp_path: Path, words: str, *args: str) -> str:
    """Run ``restrav serve --port 0 ARGS`` until its stderr holds ``words`` (or 120 s),
    then SIGTERM it; its stderr."""
    err_path = tmp_path / "err.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    env.pop("RESTRAV_REDIS__URL", None)
    with err_path.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "serve", "--port", "0", *args],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err,
        )
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and words not in err_path.read_text():
                assert proc.poll() is None, err_path.read_text()
                time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return err_path.read_text()


def test_serve_logs_a_stream_that_fails(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A missing file: the stream goes `failed`, and the log says so with the reason (no -v)."""
    text = serve_until(tmp_path, "stream cam: failed", "--model", str(tiny_model_dir),
                       "--device", "cpu", "--stream", "cam=/nonexistent.mp4")
    assert "stream cam: failed (not_found" in text, text
    assert "/nonexistent.mp4" in text
    assert "API listening on http://127.0.0.1:" in text


def test_worker_with_redis_down_is_one_line_exit_3(tiny_model_dir: Path) -> None:
    proc = restrav("worker", "--redis-url", DOWN, "--model", str(tiny_model_dir), "--device",
                   "cpu")
    assert_one_line(proc, 3, "Redis unavailable", "--redis-url")


def test_a_misspelt_environment_variable_is_named_with_the_valid_keys() -> None:
    proc = restrav("doctor", RESTRAV_MODEL__DEVIC="cpu")
    assert_one_line(proc, 3, "unknown key model.devic",
                    "environment variable RESTRAV_MODEL__DEVIC", "valid keys here:", "device")
    assert "pydantic" not in proc.stderr and "Extra inputs" not in proc.stderr


def test_a_misspelt_file_key_names_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("serve:\n  api:\n    tokn: x\n")
    proc = restrav("doctor", "--config", str(cfg))
    assert_one_line(proc, 3, "unknown key serve.api.tokn", f"settings file {cfg}",
                    "token_file")
    assert "pydantic" not in proc.stderr


def test_a_missing_token_file_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "serve.yaml"
    missing = tmp_path / "secrets" / "api_token"
    cfg.write_text(f"serve:\n  api:\n    token_file: {missing}\n")
    proc = restrav("serve", "--config", str(cfg), "--port", "0", "--stream", "cam=rtsp://h/x")
    assert_one_line(proc, 3, f"serve.api.token_file {missing}", "No such file")


def test_a_clip_given_as_the_model_is_not_a_model(tmp_path: Path) -> None:
    """torch's advice (re-run with weights_only=False: run the file's code) never reaches
    the user."""
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(64))
    proc = restrav("score", "--model", str(clip), "--device", "cpu", str(clip))
    assert_one_line(proc, 3, "not a model", "clips are the inputs")
    assert "weights_only" not in proc.stderr and "file an issue" not in proc.stderr


def test_serve_without_streams_or_token_says_what_is_missing(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    text = serve_until(tmp_path, "no streams and no API token", "--model",
                       str(tiny_model_dir), "--device", "cpu")
    assert "--stream ID=URL" in text and "serve.api.token" in text, text


CLUSTER_DOWN = f"redis+cluster://127.0.0.1:{free_port()},127.0.0.1:{free_port()}"  # closed


@pytest.mark.parametrize(
    "args",
    [
        ("submit", "--redis-url", CLUSTER_DOWN, "/tmp/x.mp4"),
        ("worker", "--check", "--redis-url", CLUSTER_DOWN),
    ],
)
def test_an_unreachable_redis_cluster_is_one_line_exit_3(args: tuple[str, ...]) -> None:
    """The sync cluster client reads the slot map when it is built: no node answering is
    the usual one line (with the nodes tried), not a traceback."""
    proc = restrav(*args)
    assert_one_line(proc, 3, "Redis unavailable", "Redis Cluster", "127.0.0.1", "--redis-url")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_doctor_says_why_a_redis_cluster_is_unreachable(tiny_model_dir: Path) -> None:
    proc = restrav("doctor", "--json", "--model", str(tiny_model_dir), "--redis-url",
                   CLUSTER_DOWN)
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)["redis"]
    assert report["reachable"] is False and report["error"] == "ConnectionError"
    assert "cannot be connected" in report["detail"], report


def test_serve_rides_out_an_unreachable_redis_cluster_at_start(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """As with one Redis down at start: serve starts, says so in one warning, buffers."""
    text = serve_until(tmp_path, "API listening on", "--model", str(tiny_model_dir),
                       "--device", "cpu", "--stream", "cam=/nonexistent.mp4",
                       "--redis-url", CLUSTER_DOWN)
    assert "Redis Cluster unreachable at start" in text and "--redis-url" in text, text
    assert "Traceback" not in text, text


def test_a_cluster_url_naming_a_plain_redis_says_which_url_to_use(
    redis_url: str, tmp_path: Path
) -> None:
    """A ``redis+cluster://`` URL whose node runs without cluster mode: exit 3 with the
    URL form to use, for every start path (serve before its model load)."""
    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    url = f"redis+cluster://127.0.0.1:{port}"
    for args in (("submit", "/tmp/x.mp4"), ("worker", "--check"),
                 ("serve", "--port", "0", "--model", str(tmp_path / "no-model"),
                  "--stream", "cam=/nonexistent.mp4")):
        proc = restrav(*args, "--redis-url", url)
        assert_one_line(proc, 3, "without cluster mode", "redis://host:port")
    doctor = json.loads(restrav("doctor", "--json", "--redis-url", url).stdout)["redis"]
    assert doctor["error"] == "ConfigError" and "without cluster mode" in doctor["detail"]
