"""End to end: `restrav serve` against a real RTSP server, a real publisher and redis-server.

rtsp-server-perl accepts the publisher (ffmpeg, looping an encoded clip) and
serves readers over UDP. The test kills and restarts the publisher and checks
that the stream goes stalled -> reconnecting -> running, that no scored window
spans the outage, that the metrics count the reconnect and the gap, and that
SIGTERM drains cleanly.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from monitor import keys

from .liveproc import Publisher, need, wait_until
from .redisproc import RedisProcess, free_port, wait_port

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "e2e-token"

pytestmark = pytest.mark.slow


@pytest.fixture
def rtsp(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """rtsp-server-perl on free ports: (reader port, publisher port)."""
    exe = need("rtsp-server-perl")
    client_port, server_port = free_port(), free_port()
    rtp = 30000 + (os.getpid() * 7) % 20000
    with (tmp_path / "rtsp-server.log").open("wb") as f:
        proc = subprocess.Popen(
            [exe, "--clientport", str(client_port), "--serverport", str(server_port),
             "--rtp_start_port", str(rtp), "--client_listen_address", "127.0.0.1",
             "--source_listen_address", "127.0.0.1"],
            stdout=f, stderr=f,
        )
    try:
        assert wait_port(client_port) and wait_port(server_port), "rtsp-server-perl did not start"
        yield client_port, server_port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    """6 s of 160x120 H.264 at 25 fps with a keyframe every 12 frames (readers join fast)."""
    out = tmp_path / "feed.mp4"
    subprocess.run(
        [need("ffmpeg"), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
         "testsrc2=size=160x120:rate=25", "-t", "6", "-c:v", "libx264", "-g", "12",
         "-pix_fmt", "yuv420p", "-preset", "ultrafast", str(out)],
        check=True,
    )
    return out


def api(port: int, path: str) -> Any:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        body = r.read().decode()
    return json.loads(body) if path != "/metrics" else body


def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{"):
            lab = line[len(name) + 1 : line.index("}")]
            if ",".join(sorted(lab.split(","))) == want:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_rtsp_stream_survives_publisher_restart(
    tmp_path: Path, tiny_model_dir: Path, rtsp: tuple[int, int], clip: Path
) -> None:
    client_port, server_port = rtsp
    rp = RedisProcess(tmp_path)
    rp.start()
    publisher = Publisher(clip, f"rtsp://127.0.0.1:{server_port}/cam", tmp_path / "pub.log")
    publisher.start()
    api_port = free_port()
    cfg = {
        "model": {"ref": str(tiny_model_dir), "device": "cpu", "image_size": 112, "threads": 1},
        "redis": {"url": rp.url},
        "serve": {
            "api": {"port": api_port, "token": TOKEN},
            "streams": [{"id": "cam", "url": f"rtsp://127.0.0.1:{client_port}/cam",
                         "transport": "udp"}],
            "source": {"stall_after_s": 1.0, "stall_reconnect_s": 3.0, "read_timeout_s": 2.5,
                       "open_timeout_s": 2.0,
                       "backoff": {"floor_s": 0.2, "cap_s": 1.0, "reset_after_s": 5.0}},
            "engine": {"max_batch": 8, "max_wait_ms": 5},
            "drain_deadline_s": 10,
        },
    }
    cfg_path = tmp_path / "serve.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "-v", "serve", "--config", str(cfg_path)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    r = redis.Redis.from_url(rp.url, decode_responses=True)
    scores_key = keys.stream_scores("cam")
    try:
        wait_until(lambda: r.xlen(scores_key) >= 5, 120, "first scores in Redis")
        assert api(api_port, "/streams/cam")["state"] == "running"
        assert r.hgetall(keys.stream_latest("cam"))["stream"] == "cam"

        t_kill = time.time()
        publisher.kill()
        wait_until(lambda: api(api_port, "/streams/cam")["state"] == "reconnecting", 30,
                   "reconnecting after the publisher died")
        time.sleep(1.5)
        t_restart = time.time()
        publisher.start()
        before = r.xlen(scores_key)
        wait_until(lambda: api(api_port, "/streams/cam")["state"] == "running", 60,
                   "running again")
        wait_until(lambda: r.xlen(scores_key) >= before + 5, 60, "scores after the restart")

        status = api(api_port, "/streams/cam")
        after_kill = [h["state"] for h in status["history"] if h["at"] >= t_kill - 0.5]
        pairs = list(itertools.pairwise(after_kill))
        assert ("stalled", "reconnecting") in pairs, after_kill
        i = pairs.index(("stalled", "reconnecting"))
        assert "running" in after_kill[i + 2 :], after_kill
        assert status["reconnects"] >= 1

        entries = [e[1] for e in r.xrange(scores_key)]
        # no window spans the outage: each ends before the kill or starts after the restart
        for e in entries:
            ws, we = float(e["wall_start"]), float(e["wall_end"])
            assert we <= t_kill + 0.5 or ws >= t_restart, (ws, we, t_kill, t_restart)
            assert float(e["end_s"]) - float(e["start_s"]) == pytest.approx(2.0, abs=1e-3)
        segs_before = {int(e["segment"]) for e in entries if float(e["wall_end"]) <= t_kill + 0.5}
        segs_after = {int(e["segment"]) for e in entries if float(e["wall_start"]) >= t_restart}
        assert segs_before and segs_after and max(segs_before) < min(segs_after)
        # read both in one transaction: the stream is still scoring, and the sink writes
        # the entry and `latest` together in one MULTI/EXEC
        pipe = r.pipeline(transaction=True)
        pipe.hgetall(keys.stream_latest("cam"))
        pipe.xrevrange(scores_key, count=1)
        latest, newest = pipe.execute()
        assert latest == newest[0][1]

        text = api(api_port, "/metrics")
        assert metric(text, "restrav_stream_reconnects_total", stream="cam") >= 1
        assert metric(text, "restrav_stream_gaps_total", stream="cam", reason="stall") >= 1
        assert metric(text, "restrav_stream_state", stream="cam", state="running") == 1
        assert metric(text, "restrav_stream_windows_scored_total", stream="cam") >= 10
        assert "restrav_stream_e2e_latency_seconds_bucket" in text

        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=30) == 0
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
        log.close()
        publisher.kill()
        rp.stop()
    out = (tmp_path / "serve.log").read_text()
    assert "drained cleanly" in out
    assert "Traceback" not in out
