"""The real ``prometheus`` binary scrapes a running ``restrav serve`` and evaluates the
real alert expressions (deploy/prometheus/alerts.yml; only ``for:`` shortened and the
intervals made 1 s): a feed that stalls (an RTSP camera that does not answer, so the
stream keeps ``reconnecting``) fires ``RestravStreamStalled`` through Prometheus's HTTP
API, while a WHIP stream whose publisher left (``reconnecting`` too, but waiting for a
publisher by design) does not."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import ClientSession

from tests.media import pattern_frame
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


async def test_prometheus_fires_stalled_for_a_dead_camera_not_for_a_waiting_whip_stream(
    tiny_model_dir: Path, redis_url: str, tmp_path: Path
) -> None:
    dead = free_port()  # nothing listens there: the camera does not answer
    settings = settings_for(tiny_model_dir, redis_url, streams=[
        {"id": "deadcam", "url": f"rtsp://127.0.0.1:{dead}/live"},
        {"id": "whipcam", "url": "whip://whipcam"},
    ])
    frames = [pattern_frame(i, 160, 120) for i in range(40)]
    prom_port = free_port()
    prom_url = f"http://127.0.0.1:{prom_port}"
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

        quick_rules(tmp_path / "alerts.yml", for_s=3)
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["alerts.yml"],
            "scrape_configs": [{"job_name": "restrav-serve",
                                "static_configs": [{"targets": [f"127.0.0.1:{svc.port}"]}]}],
        }))
        log = (tmp_path / "prometheus.log").open("w")
        prom = subprocess.Popen(
            [str(PROMETHEUS), f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=log, stderr=subprocess.STDOUT)
        try:
            firing: list[dict[str, Any]] = []
            seen: list[dict[str, Any]] = []
            async with ClientSession() as http:
                for _ in range(600):  # generous: the CPU is shared
                    try:
                        seen = await alerts(http, prom_url)
                    except OSError:
                        seen = []
                    firing = [a for a in seen if a["labels"]["alertname"] ==
                              "RestravStreamStalled" and a["state"] == "firing"]
                    if firing:
                        break
                    assert prom.poll() is None, (tmp_path / "prometheus.log").read_text()
                    await asyncio.sleep(0.2)
                assert [a["labels"]["stream"] for a in firing] == ["deadcam"], seen
                # whipcam has been waiting longer than deadcam has been reconnecting
                st = await (await http.get(f"{prom_url}/api/v1/query", params={
                    "query": 'restrav_stream_awaiting_publisher{stream="whipcam"}'})).json()
                assert st["data"]["result"][0]["value"][1] == "1", st
            assert not [a for a in seen if a["labels"].get("stream") == "whipcam"], seen
        finally:
            prom.terminate()
            prom.wait(30)
            log.close()
