"""Real processes for live-path tests: rtsp-server-perl, an ffmpeg publisher, `restrav serve`.

Shared by tests/test_serve_rtsp.py, tests/test_reconnect_resources.py and the
chaos scenarios. Each helper starts a real process and cleans it up; the
serve helper reads the process's thread count, RSS and open descriptors from
/proc for resource checks.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from .redisproc import free_port, wait_port

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "e2e-token"


def need(exe: str) -> str:
    """The path of ``exe``; fails the test (not skips) when it is missing."""
    path = shutil.which(exe)
    if path is None:
        pytest.fail(f"{exe} is not installed (see .ci/run for the apt packages)")
    return path


def wait_until(cond: Callable[[], Any], timeout_s: float, what: str, step_s: float = 0.2) -> Any:
    """Poll ``cond`` until it returns a truthy value (returned) or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(step_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def make_feed(path: Path, seconds: int = 6) -> Path:
    """160x120 H.264 at 25 fps with a keyframe every 12 frames (readers join fast)."""
    subprocess.run(
        [need("ffmpeg"), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
         "testsrc2=size=160x120:rate=25", "-t", str(seconds), "-c:v", "libx264", "-g", "12",
         "-pix_fmt", "yuv420p", "-preset", "ultrafast", "-y", str(path)],
        check=True,
    )
    return path


def end(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
    """Send ``sig`` to ``proc`` (if any) and reap it; SIGKILL after 10 s."""
    if proc is None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class Publisher:
    """ffmpeg pushing a looping clip to the RTSP server in real time."""

    def __init__(self, clip: Path, url: str, log: Path) -> None:
        self.cmd = [need("ffmpeg"), "-hide_banner", "-loglevel", "error", "-re",
                    "-stream_loop", "-1", "-i", str(clip), "-an", "-c", "copy",
                    "-f", "rtsp", url]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start publishing."""
        with self.log.open("ab") as f:
            self.proc = subprocess.Popen(self.cmd, stdout=f, stderr=f)

    def kill(self, sig: int = signal.SIGTERM) -> None:
        """Stop publishing with ``sig`` (SIGTERM: ffmpeg tears its RTSP session down.
        After a SIGKILL rtsp-server-perl keeps the mount point and refuses a new
        publisher with 403 until it restarts: see :class:`RtspServer`)."""
        end(self.proc, sig)
        self.proc = None


class RtspServer:
    """rtsp-server-perl on fixed free ports; restartable (readers and publishers reconnect)."""

    def __init__(self, log: Path) -> None:
        self.exe = need("rtsp-server-perl")
        self.client_port, self.server_port = free_port(), free_port()
        self.rtp_start = 30000 + (os.getpid() * 7) % 20000
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start (or restart) the server and wait for both ports."""
        with self.log.open("ab") as f:
            self.proc = subprocess.Popen(
                [self.exe, "--clientport", str(self.client_port), "--serverport",
                 str(self.server_port), "--rtp_start_port", str(self.rtp_start),
                 "--client_listen_address", "127.0.0.1", "--source_listen_address",
                 "127.0.0.1"],
                stdout=f, stderr=f,
            )
        ok = wait_port(self.client_port, 30) and wait_port(self.server_port, 30)
        assert ok, "rtsp-server-perl did not start"

    def stop(self) -> None:
        """Stop the server."""
        end(self.proc, signal.SIGTERM)
        self.proc = None

    def publish_url(self, mount: str) -> str:
        """Where a publisher pushes ``mount``."""
        return f"rtsp://127.0.0.1:{self.server_port}/{mount}"

    def read_url(self, mount: str) -> str:
        """Where a reader pulls ``mount``."""
        return f"rtsp://127.0.0.1:{self.client_port}/{mount}"


def fast_source_settings() -> dict[str, Any]:
    """Source timings that notice an outage within seconds (tests, chaos)."""
    return {"stall_after_s": 1.0, "stall_reconnect_s": 3.0, "read_timeout_s": 2.5,
            "open_timeout_s": 2.0,
            "backoff": {"floor_s": 0.2, "cap_s": 1.0, "reset_after_s": 5.0}}


class Serve:
    """A `restrav serve` process with the tiny model, its API and its /proc figures.

    ``gc_off`` runs it with Python's cyclic garbage collector disabled.
    """

    def __init__(self, tmp: Path, model_dir: Path, serve_cfg: dict[str, Any],
                 redis_url: str | None = None, verbose: str = "-v", gc_off: bool = False) -> None:
        self.port = free_port()
        serve_cfg = {**serve_cfg,
                     "api": {**serve_cfg.get("api", {}), "port": self.port, "token": TOKEN}}
        cfg: dict[str, Any] = {
            "model": {"ref": str(model_dir), "device": "cpu", "image_size": 112, "threads": 1},
            "serve": serve_cfg,
        }
        if redis_url is not None:
            cfg["redis"] = {"url": redis_url}
        self.cfg_path = tmp / "serve.yaml"
        self.cfg_path.write_text(yaml.safe_dump(cfg))
        self.log_path = tmp / "serve.log"
        self.verbose = verbose
        self.gc_off = gc_off
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start and wait until the API answers."""
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, *self._entry(), self.verbose, "serve", "--config",
                 str(self.cfg_path)],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        assert wait_port(self.port, 180), self.log_path.read_text(errors="replace")[-3000:]

    def _entry(self) -> list[str]:
        if not self.gc_off:
            return ["-m", "workers.cli"]
        # the cyclic garbage collector off: what a reconnect releases, it releases by
        # reference counting, at once (a test of "nothing waits for the GC")
        return ["-c", "import gc, runpy, sys; gc.disable(); sys.argv[0] = 'restrav'; "
                "runpy.run_module('workers.cli', run_name='__main__')"]

    def api(self, path: str, method: str = "GET", body: Any = None) -> Any:
        """Call the control API with the token; JSON in and out (text for /metrics)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                text = r.read().decode()
        except urllib.error.HTTPError as exc:  # say what serve answered, not only the code
            raise AssertionError(
                f"{method} {path}: {exc.code} {exc.read().decode(errors='replace')}"
            ) from exc
        if path == "/metrics":
            return text
        return json.loads(text) if text else None

    def state(self, stream: str) -> str:
        """The stream's state."""
        return str(self.api(f"/streams/{stream}")["state"])

    @property
    def pid(self) -> int:
        """The process id."""
        assert self.proc is not None
        return self.proc.pid

    def threads(self) -> int:
        """Threads of the process now."""
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def thread_names(self) -> list[str]:
        """Names of the process's threads (for messages)."""
        out = []
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            try:
                out.append(Path(f"/proc/{self.pid}/task/{tid}/comm").read_text().strip())
            except OSError:
                continue
        return sorted(out)

    def rss_mib(self) -> float:
        """Resident memory in MiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def fds(self) -> int:
        """Open file descriptors."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM, wait for the drain; the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill(self) -> None:
        """Kill it if still running."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        """Everything it printed."""
        return self.log_path.read_text(errors="replace")


def one_camera(tmp: Path) -> tuple[RtspServer, Publisher, dict[str, Any]]:
    """A started RTSP server with one publisher on mount ``cam``, and serve settings
    (one UDP stream ``cam``, fast outage detection) to extend."""
    srv = RtspServer(tmp / "rtsp.log")
    srv.start()
    pub = Publisher(make_feed(tmp / "feed.mp4"), srv.publish_url("cam"), tmp / "pub.log")
    pub.start()
    cfg: dict[str, Any] = {
        "streams": [{"id": "cam", "url": srv.read_url("cam"), "transport": "udp"}],
        "source": fast_source_settings(), "engine": {"max_batch": 8, "max_wait_ms": 5},
    }
    return srv, pub, cfg
