"""The real ``prometheus`` binary scrapes a running ``restrav serve`` and evaluates the
real alert expressions (deploy/prometheus/alerts.yml; only ``for:`` shortened and the
intervals made 1 s): a feed that stalls (an RTSP camera that does not answer, so the
stream keeps ``reconnecting``) fires ``RestravStreamStalled`` through Prometheus's HTTP
API, while a WHIP stream whose publisher left (``reconnecting`` too, but waiting for a
publisher by design) does not; and ``RestravStreamLikelyAIGenerated`` firing for three
streams ends for the one paused and the one deleted (with ``alert_end`` on
``restrav:events`` in Redis) and keeps firing for the third."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
import yaml
from aiohttp import ClientError, ClientSession

from monitor import keys
from monitor.classifier import Classifier, Scaler
from monitor.config import load_settings
from tests.media import pattern_frame, write_clip
from tests.test_webrtc_service import TOKEN, settings_for
from tests.webrtc_peers import ClipTrack, Service, WhipPublisher, free_port, metric_value

RULES = Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS = shutil.which("prometheus")

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus not installed (apt-get install prometheus; CI has it)"
)


def quick_rules(dest: Path, for_s: int) -> None:
    """The real rules with every ``for:`` shortened to ``for_s`` seconds (expressions kept)."""
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule["for"] = f"{for_s}s"
    dest.write_text(yaml.safe_dump(doc, sort_keys=False))


async def alerts(http: ClientSession, url: str) -> list[dict[str, Any]]:
    """Prometheus's active alerts (pending and firing)."""
    async with http.get(f"{url}/api/v1/alerts") as r:
        body = await r.json()
    assert body["status"] == "success", body
    return list(body["data"]["alerts"])


class Prometheus:
    """The real server scraping one ``restrav serve`` with the quick rules."""

    def __init__(self, tmp_path: Path, serve_port: int) -> None:
        self.dir = tmp_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        quick_rules(tmp_path / "alerts.yml", for_s=3)
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["alerts.yml"],
            "scrape_configs": [{"job_name": "restrav-serve",
                                "static_configs": [{"targets": [f"127.0.0.1:{serve_port}"]}]}],
        }))

    def __enter__(self) -> Prometheus:
        self.log = (self.dir / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [str(PROMETHEUS), f"--config.file={self.dir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.dir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()

    async def firing_until(self, http: ClientSession, alertname: str, want: set[str],
                           timeout_s: float = 120.0) -> list[dict[str, Any]]:
        """Poll until the streams firing ``alertname`` are exactly ``want``; the alerts."""
        seen: list[dict[str, Any]] = []
        got: set[str] = set()
        for _ in range(int(timeout_s / 0.2)):  # generous: the CPU is shared
            try:
                seen = await alerts(http, self.url)
            except (OSError, ClientError):  # not listening yet, or 503 while starting
                seen = []
            got = {a["labels"]["stream"] for a in seen
                   if a["labels"]["alertname"] == alertname and a["state"] == "firing"}
            if got == want:
                return seen
            assert self.proc.poll() is None, (self.dir / "prometheus.log").read_text()
            await asyncio.sleep(0.2)
        pytest.fail(f"{alertname} firing for {sorted(got)}, wanted {sorted(want)}: {seen}")


async def test_prometheus_ends_the_ai_alert_of_a_paused_and_a_deleted_stream(
    tiny_model_dir: Path, redis_url: str, tmp_path: Path
) -> None:
    clip = tmp_path / "clip.mp4"
    write_clip(clip, fps=25, n_frames=100, size=(64, 48))
    # every window looks AI-generated: the mean curvature is far above the centre
    Classifier(kind="mean_curvature", scaler=Scaler.identity(),
               params={"centre": np.array([-1000.0]), "scale": np.array([1.0])},
               threshold=0.5, threshold_mode="fixed").save(tmp_path / "clf")
    settings = load_settings(None, **{
        "model": {"ref": str(tiny_model_dir), "device": "cpu", "image_size": 56,
                  "batch_size": 8},
        "classifier": {"path": str(tmp_path / "clf")},
        "redis": {"url": redis_url},
        "serve": {
            "api": {"port": free_port(), "token": TOKEN, "allow_file_sources": True},
            "streams": [{"id": sid, "url": f"file://{clip}", "loop": True}
                        for sid in ("keep", "paused", "deleted")],
            "persist_streams": False,
            "sinks": {"stdout": False},
            "engine": {"hop": 4, "max_batch": 8, "max_wait_ms": 5.0},
            "alerts": {"enter": 0.8, "leave": 0.6, "min_duration_s": 0.5},
        },
    })
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with Service(settings) as svc, ClientSession() as http:
        with Prometheus(tmp_path, svc.port) as prom:
            await prom.firing_until(http, "RestravStreamLikelyAIGenerated",
                                    {"keep", "paused", "deleted"})
            async with http.post(f"{svc.url}/streams/paused/pause", headers=auth) as r:
                assert r.status == 200, await r.text()
            async with http.delete(f"{svc.url}/streams/deleted", headers=auth) as r:
                assert r.status in (200, 204), await r.text()
            await prom.firing_until(http, "RestravStreamLikelyAIGenerated", {"keep"})
        r = aioredis.from_url(redis_url, decode_responses=True)
        try:
            events = [f for _, f in await r.xrange(keys.EVENTS)]
        finally:
            await r.aclose()
    ended = {e["stream"] for e in events if e.get("kind") == "alert_end"}
    assert ended == {"paused", "deleted"}, events  # read before serve's drain ends all


async def test_prometheus_fires_stalled_for_a_dead_camera_not_for_a_waiting_whip_stream(
    tiny_model_dir: Path, redis_url: str, tmp_path: Path
) -> None:
    dead = free_port()  # nothing listens there: the camera does not answer
    settings = settings_for(tiny_model_dir, redis_url, streams=[
        {"id": "deadcam", "url": f"rtsp://127.0.0.1:{dead}/live"},
        {"id": "whipcam", "url": "whip://whipcam"},
    ])
    frames = [pattern_frame(i, 160, 120) for i in range(40)]
    async with Service(settings) as svc:
        # a publisher comes and goes: whipcam then waits (reconnecting) for the next one
        pub = WhipPublisher(svc.url, "whipcam", ClipTrack(frames, loop=True), TOKEN)
        assert await pub.start() == 201
        await pub.stop()
        for _ in range(300):
            text = await svc.metrics_text()
            if metric_value(text, "restrav_stream_awaiting_publisher", stream="whipcam") == 1:
                break
            await asyncio.sleep(0.1)
        assert metric_value(text, "restrav_stream_state", stream="whipcam",
                            state="reconnecting") == 1

        with Prometheus(tmp_path, svc.port) as prom:
            async with ClientSession() as http:
                seen = await prom.firing_until(http, "RestravStreamStalled", {"deadcam"})
                # whipcam has been waiting longer than deadcam has been reconnecting
                st = await (await http.get(f"{prom.url}/api/v1/query", params={
                    "query": 'restrav_stream_awaiting_publisher{stream="whipcam"}'})).json()
                assert st["data"]["result"][0]["value"][1] == "1", st
            assert not [a for a in seen if a["labels"].get("stream") == "whipcam"], seen
