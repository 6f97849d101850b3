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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Self

import numpy as np
import pytest
import redis.asyncio as aioredis
import yaml
from aiohttp import ClientError, ClientSession

from monitor import keys
from monitor.config import load_settings
from monitor.core.classifier import Classifier, Scaler
from tests.media import pattern_frame, write_clip
from tests.test_webrtc_service import TOKEN, settings_for
from tests.webrtc_peers import ClipTrack, Service, WhipPublisher, free_port, metric_value

RULES = Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "alerts.yml"
ALERTMANAGER_CONFIG = (
    Path(__file__).resolve().parents[1] / "deploy" / "alertmanager" / "alertmanager.yml"
)
PROMETHEUS = shutil.which("prometheus")
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")

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


class Daemon:
    """A server process started by ``__enter__`` (its output in ``dir/log_name``), ended by
    ``__exit__``."""

    dir: Path
    log_name: str

    def args(self) -> list[str]:
        """The command line."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.log = (self.dir / self.log_name).open("w")
        self.proc = subprocess.Popen(self.args(), stdout=self.log, stderr=subprocess.STDOUT)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


class Prometheus(Daemon):
    """The real server scraping one ``restrav serve`` with the quick rules."""

    log_name = "prometheus.log"

    def __init__(self, tmp_path: Path, serve_port: int, alertmanager_port: int | None = None
                 ) -> None:
        self.dir = tmp_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        quick_rules(tmp_path / "alerts.yml", for_s=3)
        config: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["alerts.yml"],
            "scrape_configs": [{"job_name": "restrav-serve",
                                "static_configs": [{"targets": [f"127.0.0.1:{serve_port}"]}]}],
        }
        if alertmanager_port is not None:
            config["alerting"] = {"alertmanagers": [{"static_configs": [
                {"targets": [f"127.0.0.1:{alertmanager_port}"]}]}]}
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))

    def args(self) -> list[str]:
        """The command line."""
        return [str(PROMETHEUS), f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}"]

    async def firing_until(self, http: ClientSession, alertname: str, want: set[str],
                           timeout_s: float = 120.0) -> list[dict[str, Any]]:
        """Poll until the streams firing ``alertname`` are exactly ``want``; the alerts."""

        async def fetch() -> tuple[Any, list[dict[str, Any]]]:
            seen = await alerts(http, self.url)
            return {a["labels"]["stream"] for a in seen if a["labels"]["alertname"] ==
                    alertname and a["state"] == "firing"}, seen

        return await poll_until(fetch, want, self.proc, self.dir / "prometheus.log",
                                timeout_s, f"{alertname} firing for")

    async def value_until(self, http: ClientSession, query: str, want: str,
                          timeout_s: float = 120.0) -> None:
        """Poll until the instant query's single result has the value ``want``."""

        async def fetch() -> tuple[Any, Any]:
            async with http.get(f"{self.url}/api/v1/query", params={"query": query}) as r:
                result = (await r.json())["data"]["result"]
            return (result[0]["value"][1] if len(result) == 1 else result), result

        await poll_until(fetch, want, self.proc, self.dir / "prometheus.log", timeout_s, query)


async def poll_until(fetch: Callable[[], Awaitable[tuple[Any, Any]]], want: Any,
                     proc: subprocess.Popen[bytes], log: Path, timeout_s: float, what: str
                     ) -> Any:
    """Poll ``fetch`` (-> (value, detail)) until the value is ``want``; the detail.
    Fails the test after ``timeout_s`` (generous: the CPU is shared) or if ``proc`` died."""
    got: Any = None
    detail: Any = None
    for _ in range(int(timeout_s / 0.2)):
        try:
            got, detail = await fetch()
        except (OSError, ClientError):  # not listening yet, or 503 while starting
            got = detail = None
        if got == want:
            return detail
        assert proc.poll() is None, log.read_text()
        await asyncio.sleep(0.2)
    pytest.fail(f"{what} {got}, wanted {want}: {detail}")


class Alertmanager(Daemon):
    """The real Alertmanager with the shipped configuration (inhibit rules included)."""

    log_name = "alertmanager.log"

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path / "am"
        self.dir.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def args(self) -> list[str]:
        """The command line (no cluster gossip port)."""
        assert ALERTMANAGER is not None
        return [ALERTMANAGER, f"--config.file={ALERTMANAGER_CONFIG}",
                f"--storage.path={self.dir}", f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address="]

    async def alerts_until(self, http: ClientSession, want: dict[str, str],
                           timeout_s: float = 180.0) -> list[dict[str, Any]]:
        """Poll until the alerts it holds are ``want`` (alertname -> "active" or
        "suppressed"), counting only those of alert names in ``want``."""

        async def fetch() -> tuple[Any, list[dict[str, Any]]]:
            async with http.get(f"{self.url}/api/v2/alerts") as r:
                seen = list(await r.json())
            return {a["labels"]["alertname"]: a["status"]["state"] for a in seen
                    if a["labels"]["alertname"] in want}, seen

        return list(await poll_until(fetch, want, self.proc, self.dir / "alertmanager.log",
                                     timeout_s, "Alertmanager holds"))


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


async def test_ready_follows_the_real_state_without_readyz_and_a_waiting_whip_stream_shows(
    tiny_model_dir: Path, redis_url: str, tmp_path: Path
) -> None:
    """Nobody calls /readyz: Prometheus alone reads ``restrav_serve_ready`` 1 from its first
    scrape on (RestravServeNotReady never pending), and a declared WHIP stream that never had
    a publisher reads ``restrav_stream_awaiting_publisher`` 1."""
    settings = settings_for(tiny_model_dir, redis_url,
                            streams=[{"id": "whipcam", "url": "whip://whipcam"}])
    async with Service(settings) as svc, ClientSession() as http:
        with Prometheus(tmp_path, svc.port) as prom:
            await prom.value_until(
                http, 'restrav_stream_awaiting_publisher{stream="whipcam"}', "1")
            await prom.value_until(
                http, "count_over_time(restrav_serve_ready[5m]) >= bool 5", "1")
            await prom.value_until(http, "min_over_time(restrav_serve_ready[5m])", "1")
            seen = await alerts(http, prom.url)
    assert not [a for a in seen if a["labels"]["alertname"] == "RestravServeNotReady"], seen


@pytest.mark.skipif(ALERTMANAGER is None, reason="prometheus-alertmanager not installed")
async def test_a_dead_camera_pages_once_through_the_shipped_inhibit_rules(
    tiny_model_dir: Path, redis_url: str, tmp_path: Path
) -> None:
    """A camera that does not answer is stalled (reconnecting) and reconnects over and
    over: Prometheus fires both alerts, the real Alertmanager with the shipped config holds
    RestravReconnectStorm back (suppressed) behind RestravStreamStalled."""
    dead = free_port()  # nothing listens there: the camera does not answer
    settings = settings_for(tiny_model_dir, redis_url, streams=[
        {"id": "deadcam", "url": f"rtsp://127.0.0.1:{dead}/live"}])
    async with Service(settings) as svc, ClientSession() as http:
        with Alertmanager(tmp_path) as am, Prometheus(tmp_path, svc.port, am.port):
            seen = await am.alerts_until(http, {"RestravStreamStalled": "active",
                                                "RestravReconnectStorm": "suppressed"})
    storm = next(a for a in seen if a["labels"]["alertname"] == "RestravReconnectStorm")
    assert storm["labels"]["stream"] == "deadcam" and storm["status"]["inhibitedBy"], storm
