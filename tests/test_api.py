"""The control API against a real stream manager, engine, file sources and redis-server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
import torch
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from monitor import keys
from monitor.config import ServeSettings, StreamSpec, load_settings
from monitor.core.backbone import load_backbone
from monitor.core.embed import Embedder
from monitor.live.api import ApiContext, create_app
from monitor.live.engine import Engine
from monitor.live.service import RedisDesiredStore, StreamManager
from monitor.live.sinks import MemorySink
from monitor.metrics import StreamMetrics

from .media import write_clip

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def embedder(tiny_model_dir: Path) -> Iterator[Embedder]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield Embedder(load_backbone(str(tiny_model_dir), "cpu", image_size=112), batch_size=16)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("api") / "clip.mp4"
    write_clip(path, fps=25, n_frames=100, size=(64, 48))
    return path


def serve_settings(**api: Any) -> ServeSettings:
    return load_settings(serve={
        "api": {"max_body_bytes": 4096, "max_streams": 3, **api},
        "credentials": {"cam": {"username": "admin", "password": "hunter2"}},
        "source": {"stall_after_s": 2, "backoff": {"floor_s": 0.1, "cap_s": 0.5}},
    }).serve


class Harness:
    def __init__(self, client: TestClient[Any, Any], manager: StreamManager, sink: MemorySink,
                 metrics: StreamMetrics, redis_url: str) -> None:
        self.client, self.manager, self.sink = client, manager, sink
        self.metrics, self.redis_url = metrics, redis_url

    def desired(self) -> dict[str, dict[str, Any]]:
        r = redis.Redis.from_url(self.redis_url, decode_responses=True)
        return {k: json.loads(v) for k, v in r.hgetall(keys.STREAMS_DESIRED).items()}


async def build(embedder: Embedder, redis_url: str, settings: ServeSettings,
                token: str | None = TOKEN, classifier: Any = None, restore: bool = True
                ) -> tuple[Harness, Engine, Any]:
    metrics = StreamMetrics(CollectorRegistry())
    engine = Engine(embedder, classifier, settings.engine, metrics)
    engine.start(asyncio.get_running_loop())
    sink = MemorySink()
    await sink.start()
    client = aioredis.from_url(redis_url)
    manager = StreamManager(engine, sink, settings, metrics, RedisDesiredStore(client))
    if restore:
        await manager.restore()
    ctx = ApiContext(manager=manager, metrics=metrics, settings=settings.api, token=token)
    tc: TestClient[Any, Any] = TestClient(TestServer(create_app(ctx)))
    await tc.start_server()
    return Harness(tc, manager, sink, metrics, redis_url), engine, client


async def teardown(harness: Harness, engine: Engine, client: Any) -> None:
    """Stop what :func:`build` started."""
    await harness.manager.stop()
    await engine.drain(10)
    await harness.sink.aclose()
    await harness.client.close()
    await client.aclose()


@pytest.fixture
async def h(embedder: Embedder, redis_url: str) -> AsyncIterator[Harness]:
    harness, engine, client = await build(
        embedder, redis_url, serve_settings(allow_file_sources=True)
    )
    try:
        yield harness
    finally:
        await teardown(harness, engine, client)


async def test_open_endpoints_need_no_token(h: Harness) -> None:
    c = h.client
    assert (await c.get("/healthz")).status == 200
    ready = await c.get("/readyz")
    assert ready.status == 200 and (await ready.json())["ready"] is True
    m = await c.get("/metrics")
    assert m.status == 200 and "restrav_api_requests_total" in await m.text()


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": f"Basic {TOKEN}"},
                                     {"Authorization": TOKEN}])
async def test_control_routes_refuse_without_the_token(h: Harness, headers: dict[str, str],
                                                       clip: Path) -> None:
    c = h.client
    r = await c.get("/streams", headers=headers)
    assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    body = {"id": "x", "url": f"file://{clip}"}
    assert (await c.post("/streams", json=body, headers=headers)).status == 401
    assert (await c.delete("/streams/x", headers=headers)).status == 401
    assert len(h.manager) == 0 and h.desired() == {}


async def test_control_api_disabled_without_a_configured_token(
    embedder: Embedder, redis_url: str
) -> None:
    harness, engine, client = await build(embedder, redis_url, serve_settings(), token=None)
    try:
        r = await harness.client.get("/streams", headers=AUTH)
        assert r.status == 503 and (await r.json())["error"]["code"] == "control_disabled"
    finally:
        await engine.drain(5)
        await harness.client.close()
        await client.aclose()


async def test_add_score_pause_resume_remove_at_runtime(h: Harness, clip: Path) -> None:
    c = h.client
    spec = {"id": "cam-1", "url": f"file://{clip}", "loop": True}
    r = await c.post("/streams", json=spec, headers=AUTH)
    assert r.status == 201, await r.text()
    assert (await r.json())["outcome"] == "created"
    assert await h.sink.wait_for(3, timeout_s=60, stream="cam-1")
    st = await (await c.get("/streams/cam-1", headers=AUTH)).json()
    assert st["state"] == "running" and st["windows_scored"] >= 3 and st["kind"] == "file"
    # idempotent by id: the same spec changes nothing, another spec conflicts on POST
    r = await c.post("/streams", json=spec, headers=AUTH)
    assert r.status == 200 and (await r.json())["outcome"] == "unchanged"
    r = await c.post("/streams", json={**spec, "hop": 2}, headers=AUTH)
    assert r.status == 409
    r = await c.put("/streams/cam-1", json={"url": spec["url"], "loop": True, "hop": 2},
                    headers=AUTH)
    assert r.status == 200 and (await r.json())["outcome"] == "replaced"
    assert h.desired()["cam-1"]["hop"] == 2
    r = await c.post("/streams/cam-1/pause", headers=AUTH)
    assert r.status == 200 and (await r.json())["state"] == "paused"
    assert h.desired()["cam-1"]["paused"] is True
    n = len(h.sink.scores)
    await asyncio.sleep(0.5)
    assert len(h.sink.scores) <= n + 2  # only windows already in flight
    r = await c.post("/streams/cam-1/resume", headers=AUTH)
    assert r.status == 200
    assert await h.sink.wait_for(len(h.sink.scores) + 2, timeout_s=60, stream="cam-1")
    assert (await c.delete("/streams/cam-1", headers=AUTH)).status == 204
    assert (await c.delete("/streams/cam-1", headers=AUTH)).status == 204  # idempotent
    assert (await c.get("/streams/cam-1", headers=AUTH)).status == 404
    assert (await c.post("/streams/cam-1/pause", headers=AUTH)).status == 404
    assert (await (await c.get("/streams", headers=AUTH)).json())["streams"] == []
    assert h.desired() == {}


HOSTILE: list[tuple[str, Any, int]] = [
    ("ftp scheme", {"id": "a", "url": "ftp://example.com/x.mp4"}, 422),
    ("javascript", {"id": "a", "url": "javascript:alert(1)"}, 422),
    ("no host", {"id": "a", "url": "rtsp:///x"}, 422),
    ("spaces", {"id": "a", "url": "rtsp://cam/x y"}, 422),
    ("unknown field", {"id": "a", "url": "rtsp://cam/x", "exec": "rm -rf /"}, 422),
    ("bad id", {"id": "../../etc", "url": "rtsp://cam/x"}, 422),
    ("id too long", {"id": "a" * 65, "url": "rtsp://cam/x"}, 422),
    ("url too long", {"id": "a", "url": "rtsp://cam/" + "x" * 3000}, 422),
    ("unknown kind", {"id": "a", "url": "rtsp://cam/x", "kind": "nope"}, 422),
    ("unknown credentials", {"id": "a", "url": "rtsp://cam/x", "credentials_ref": "zz"}, 422),
    ("wrong type", {"id": "a", "url": "rtsp://cam/x", "hop": "many"}, 422),
    ("not an object", ["rtsp://cam/x"], 422),
]


@pytest.mark.parametrize(("name", "body", "status"), HOSTILE, ids=[x[0] for x in HOSTILE])
async def test_hostile_bodies_get_4xx_and_change_nothing(
    h: Harness, name: str, body: Any, status: int
) -> None:
    r = await h.client.post("/streams", json=body, headers=AUTH)
    assert r.status == status, await r.text()
    err = await r.json()
    assert set(err["error"]) == {"code", "message"}
    assert len(h.manager) == 0 and h.desired() == {}
    counted = h.metrics.registry.get_sample_value(
        "restrav_api_requests_total", {"route": "/streams", "code": str(status)})
    assert counted == 1


async def test_huge_non_json_and_wrong_type_bodies(h: Harness) -> None:
    c = h.client
    huge = b'{"id": "a", "url": "rtsp://cam/x", "pad": "' + b"x" * 100_000 + b'"}'
    r = await c.post("/streams", data=huge, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status == 413
    r = await c.post("/streams", data=b"{not json", headers={**AUTH,
                                                               "Content-Type": "application/json"})
    assert r.status == 400
    r = await c.post("/streams", data=b"id=a", headers={**AUTH, "Content-Type": "text/plain"})
    assert r.status == 415
    r = await c.put("/streams/a", json={"id": "b", "url": "rtsp://cam/x"}, headers=AUTH)
    assert r.status == 422
    assert (await c.get("/streams/bad%20id", headers=AUTH)).status == 404
    assert len(h.manager) == 0 and h.desired() == {}


async def test_file_sources_refused_unless_allowed(embedder: Embedder, redis_url: str,
                                                  clip: Path) -> None:
    harness, engine, client = await build(embedder, redis_url, serve_settings())
    try:
        r = await harness.client.post("/streams", json={"id": "f", "url": str(clip)},
                                      headers=AUTH)
        assert r.status == 422 and "file sources are disabled" in (await r.json())["error"][
            "message"]
        assert len(harness.manager) == 0
    finally:
        await engine.drain(5)
        await harness.client.close()
        await client.aclose()


async def test_max_streams(h: Harness) -> None:
    for i in range(3):
        r = await h.client.put(f"/streams/s{i}", json={"url": f"rtsp://127.0.0.1:9/s{i}"},
                               headers=AUTH)
        assert r.status == 201
    r = await h.client.put("/streams/s9", json={"url": "rtsp://127.0.0.1:9/x"}, headers=AUTH)
    assert r.status == 429 and len(h.manager) == 3


async def test_credentials_never_stored_or_shown_and_the_set_is_restored(
    h: Harness, embedder: Embedder, redis_url: str
) -> None:
    c = h.client
    await c.put("/streams/inline", json={"url": "rtsp://admin:pw123@127.0.0.1:9/a"},
                headers=AUTH)
    await c.put("/streams/ref", json={"url": "rtsp://127.0.0.1:9/b", "credentials_ref": "cam",
                                      "paused": True}, headers=AUTH)
    listing = await (await c.get("/streams", headers=AUTH)).text()
    metrics = await (await c.get("/metrics")).text()
    stored = json.dumps(h.desired())
    for text in (listing, metrics, stored):
        assert "pw123" not in text and "hunter2" not in text and "admin:" not in text
    assert h.desired()["inline"]["url"] == "rtsp://127.0.0.1:9/a"
    assert h.desired()["inline"]["inline_credentials"] is True

    # a restart: a new manager restores the desired set from Redis
    metrics2 = StreamMetrics(CollectorRegistry())
    engine2 = Engine(embedder, None, serve_settings().engine, metrics2)
    engine2.start(asyncio.get_running_loop())
    client2 = aioredis.from_url(redis_url)
    sink2 = MemorySink()
    mgr2 = StreamManager(engine2, sink2, serve_settings(), metrics2, RedisDesiredStore(client2))
    try:
        await mgr2.restore((StreamSpec(id="from-config", url="rtsp://127.0.0.1:9/c"),))
        ids = {s.id: s for s in mgr2.list()}
        assert set(ids) == {"inline", "ref", "from-config"}
        assert ids["ref"].state == "paused"
        assert ids["inline"].state == "failed"
        assert ids["inline"].error is not None
        assert ids["inline"].error["code"] == "credentials_lost"
    finally:
        await mgr2.stop()
        await engine2.drain(5)
        await client2.aclose()


async def test_token_from_file(tmp_path: Path) -> None:
    from monitor.config import ApiSettings
    from monitor.live.api import resolve_token

    f = tmp_path / "token"
    f.write_text("from-file\n")
    assert resolve_token(ApiSettings(token_file=f)) == "from-file"
    assert resolve_token(ApiSettings(token=SecretStr("x"))) == "x"
    assert resolve_token(ApiSettings()) is None


async def test_missing_file_fails_the_stream_and_a_finished_file_stops(
    h: Harness, tmp_path: Path
) -> None:
    r = await h.client.put("/streams/gone", json={"url": str(tmp_path / "nope.mp4")},
                           headers=AUTH)
    assert r.status == 201

    async def state(sid: str) -> dict[str, Any]:
        return dict(await (await h.client.get(f"/streams/{sid}", headers=AUTH)).json())

    for _ in range(100):
        st = await state("gone")
        if st["state"] == "failed":
            break
        await asyncio.sleep(0.1)
    assert st["state"] == "failed" and st["error"]["code"] == "not_found"
    short = tmp_path / "short.mp4"
    write_clip(short, fps=25, n_frames=30, size=(64, 48))  # 1.2 s: no full window
    await h.client.put("/streams/short", json={"url": f"file://{short}"}, headers=AUTH)
    for _ in range(100):
        st = await state("short")
        if st["state"] == "stopped":
            break
        await asyncio.sleep(0.1)
    assert st["state"] == "stopped" and st["frames"] == 30 and st["windows_scored"] == 0
    assert [x["state"] for x in st["history"]] == ["starting", "running", "stopped"]


async def until_every_stream_has_an_error(h: Harness) -> dict[str, Any]:
    """Poll GET /streams until every stream shows an error; id -> status."""
    statuses: dict[str, Any] = {}
    for _ in range(100):
        listing = await (await h.client.get("/streams", headers=AUTH)).json()
        statuses = {s["id"]: s for s in listing["streams"]}
        if all(s["error"] for s in statuses.values()):
            break
        await asyncio.sleep(0.1)
    return statuses


async def test_connection_errors_never_show_credentials(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    await h.client.put("/streams/ref", json={"url": "rtsp://127.0.0.1:9/b",
                                             "credentials_ref": "cam"}, headers=AUTH)
    await h.client.put("/streams/inline", json={"url": "rtsp://admin:pw123@127.0.0.1:9/a"},
                       headers=AUTH)
    statuses = await until_every_stream_has_an_error(h)
    for s in statuses.values():
        assert s["error"] is not None and s["state"] in ("reconnecting", "starting")
        assert "127.0.0.1:9" in s["error"]["message"]  # says where, not who
    text = json.dumps(statuses) + caplog.text + await (await h.client.get("/metrics")).text()
    assert "pw123" not in text and "hunter2" not in text and "admin" not in text


async def test_an_error_about_a_url_with_a_query_keeps_its_words(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """The URL in a stream's error is redacted, the message around it is kept: a query
    string does not percent-encode the reason, a secret's value does not swallow it."""
    caplog.set_level("INFO")
    await h.client.put("/streams/q", json={"url": "rtsp://127.0.0.1:9/x?a=1"}, headers=AUTH)
    await h.client.put("/streams/tok", json={"url": "rtsp://127.0.0.1:9/y?token=abc"},
                       headers=AUTH)
    statuses = await until_every_stream_has_an_error(h)
    q, tok = statuses["q"]["error"]["message"], statuses["tok"]["error"]["message"]
    assert q.startswith("rtsp://127.0.0.1:9/x?a=1: ") and "Connection refused" in q, q
    assert tok.startswith("rtsp://127.0.0.1:9/y?token=***: ") and "Connection refused" in tok
    assert "abc" not in tok and "abc" not in caplog.text
    logged = [r.getMessage() for r in caplog.records if "stream tok:" in r.getMessage()]
    assert any("Connection refused" in m for m in logged), logged


async def serve_dir(folder: Path) -> tuple[Any, int]:
    """``folder`` served at ``/live`` over real HTTP on loopback; (runner, port)."""
    from aiohttp import web

    app = web.Application()
    app.router.add_static("/live", folder)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, int(runner.addresses[0][1])


async def test_a_live_hls_feed_skips_no_window(
    embedder: Embedder, redis_url: str, tmp_path: Path
) -> None:
    """ffmpeg's live HLS (4 s segments, written in real time) over real HTTP, the default
    per-stream backlog (24 samples): the segments' bursts are paced, so no window is
    skipped as overload (before: a 4 s segment was 46 samples at once)."""
    import subprocess


    hls = tmp_path / "hls"
    hls.mkdir()
    ffmpeg = subprocess.Popen(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi", "-i",
         "testsrc2=size=160x120:rate=25", "-t", "40", "-c:v", "libx264", "-g", "25",
         "-pix_fmt", "yuv420p", "-preset", "ultrafast", "-f", "hls", "-hls_time", "4",
         "-hls_list_size", "6", str(hls / "index.m3u8")],
        stdin=subprocess.DEVNULL,
    )
    runner, port = await serve_dir(hls)
    harness, engine, client = await build(embedder, redis_url, serve_settings())
    try:
        for _ in range(200):  # the playlist appears with the first segment (4 s)
            if (hls / "index.m3u8").exists():
                break
            await asyncio.sleep(0.1)
        r = await harness.client.put(
            "/streams/hls", json={"url": f"http://127.0.0.1:{port}/live/index.m3u8"},
            headers=AUTH)
        assert r.status == 201
        # three segments' worth of windows (12 s at 11.5 Hz, less the first window)
        assert await harness.sink.wait_for(110, timeout_s=90, stream="hls")
        skipped = harness.metrics.registry.get_sample_value(
            "restrav_stream_windows_skipped_total", {"stream": "hls", "reason": "overload"})
        assert not skipped, skipped
    finally:
        await teardown(harness, engine, client)
        await runner.cleanup()
        ffmpeg.kill()
        ffmpeg.wait()


async def test_hls_source_scores_and_alerts_reach_the_sink(
    embedder: Embedder, redis_url: str, tmp_path: Path
) -> None:
    """An HLS playlist over real HTTP, a classifier that always says AI: scores and one alert."""
    import subprocess

    import numpy as np

    from monitor.core.classifier import Classifier, Scaler

    hls = tmp_path / "hls"
    hls.mkdir()
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
         "testsrc2=size=160x120:rate=25", "-t", "4", "-c:v", "libx264", "-g", "25",
         "-pix_fmt", "yuv420p", "-preset", "ultrafast", "-f", "hls", "-hls_time", "1",
         "-hls_playlist_type", "vod", str(hls / "index.m3u8")],
        check=True,
    )
    runner, port = await serve_dir(hls)
    always_ai = Classifier(kind="logreg", scaler=Scaler(np.zeros(21), np.ones(21)),
                           params={"coef": np.zeros((1, 21)), "intercept": np.array([5.0])},
                           threshold=0.5)
    settings = load_settings(serve={"alerts": {"enter": 0.8, "leave": 0.6,
                                               "min_duration_s": 0}}).serve
    harness, engine, client = await build(embedder, redis_url, settings, classifier=always_ai)
    try:
        r = await harness.client.put(
            "/streams/hls", json={"url": f"http://127.0.0.1:{port}/live/index.m3u8"},
            headers=AUTH)
        assert r.status == 201
        assert await harness.sink.wait_for(3, timeout_s=60, stream="hls")
        sc = harness.sink.scores[0]
        assert sc.p_ai == pytest.approx(1 / (1 + np.exp(-5.0)))
        assert sc.score.is_ai is True
        for _ in range(50):
            if harness.sink.events:
                break
            await asyncio.sleep(0.1)
        ev = harness.sink.events[0]
        assert ev.kind == "alert_start" and ev.stream_id == "hls"
        st = await (await harness.client.get("/streams/hls", headers=AUTH)).json()
        assert st["alert_active"] is True and st["kind"] == "http"
        assert harness.metrics.registry.get_sample_value(
            "restrav_stream_alert_active", {"stream": "hls"}) == 1
    finally:
        await harness.manager.stop()
        await engine.drain(10)
        await harness.client.close()
        await client.aclose()
        await runner.cleanup()


async def test_ready_only_once_the_configured_streams_are_listed(
    embedder: Embedder, redis_url: str
) -> None:
    """Before the manager has listed the configured streams /readyz is 503 (and the gauge
    0, read by a scrape alone); after, /readyz is 200 and GET /streams shows them."""
    harness, engine, client = await build(embedder, redis_url, serve_settings(), restore=False)
    try:
        c = harness.client
        r = await c.get("/readyz")
        assert r.status == 503 and "streams" in (await r.json())["reasons"]
        assert (await c.get("/metrics")).status == 200
        assert harness.metrics.registry.get_sample_value("restrav_serve_ready") == 0.0
        await harness.manager.restore((StreamSpec(id="cfg", url="rtsp://127.0.0.1:9/c"),))
        assert (await c.get("/metrics")).status == 200  # no /readyz: the scrape evaluates it
        assert harness.metrics.registry.get_sample_value("restrav_serve_ready") == 1.0
        assert (await c.get("/readyz")).status == 200
        listing = await (await c.get("/streams", headers=AUTH)).json()
        assert [s["id"] for s in listing["streams"]] == ["cfg"]
    finally:
        await teardown(harness, engine, client)


async def test_readyz_reports_redis_down_and_draining(embedder: Embedder, tmp_path: Path) -> None:
    from monitor.live.api import CTX_KEY, redis_ready_check

    from .redisproc import RedisProcess

    rp = RedisProcess(tmp_path)
    rp.start()
    harness, engine, client = await build(embedder, rp.url, serve_settings())
    assert harness.client.app is not None
    api_ctx = harness.client.app[CTX_KEY]
    api_ctx.ready_checks["redis"] = redis_ready_check(client, 0.5)
    try:
        r = await harness.client.get("/readyz")
        assert r.status == 200
        rp.stop()
        r = await harness.client.get("/readyz")
        body = await r.json()
        assert r.status == 503 and "redis unreachable" in body["reasons"]["redis"]
        rp.start()
        assert (await harness.client.get("/readyz")).status == 200
        api_ctx.draining = True
        r = await harness.client.get("/readyz")
        assert r.status == 503 and "draining" in (await r.json())["reasons"]
        assert (await harness.client.get("/healthz")).status == 200
    finally:
        await engine.drain(5)
        await harness.client.close()
        await client.aclose()
        rp.stop()


async def test_pause_and_delete_end_an_active_alert(
    embedder: Embedder, redis_url: str, clip: Path
) -> None:
    """A paused stream is not in alert (gauge 0, ``alert_end`` reason ``paused``); resumed it
    alerts again; deleting it in alert writes an ``alert_end`` (reason ``deleted``), a
    shutdown one with reason ``shutdown``."""
    import numpy as np

    from monitor.core.classifier import Classifier, Scaler

    always_ai = Classifier(kind="logreg", scaler=Scaler(np.zeros(21), np.ones(21)),
                           params={"coef": np.zeros((1, 21)), "intercept": np.array([5.0])},
                           threshold=0.5)
    settings = load_settings(serve={
        "api": {"allow_file_sources": True},
        "alerts": {"enter": 0.8, "leave": 0.6, "min_duration_s": 0},
    }).serve
    harness, engine, client = await build(embedder, redis_url, settings, classifier=always_ai)

    async def events(n: int) -> list[Any]:
        for _ in range(300):
            if len(harness.sink.events) >= n:
                break
            await asyncio.sleep(0.1)
        return harness.sink.events

    def gauge() -> float | None:
        return harness.metrics.registry.get_sample_value(
            "restrav_stream_alert_active", {"stream": "cam"})

    try:
        r = await harness.client.put(
            "/streams/cam", json={"url": str(clip), "loop": True}, headers=AUTH)
        assert r.status == 201
        assert [e.kind for e in await events(1)] == ["alert_start"]
        assert gauge() == 1
        r = await harness.client.post("/streams/cam/pause", headers=AUTH)
        assert r.status == 200 and (await r.json())["alert_active"] is False
        ev = (await events(2))[1]
        assert (ev.kind, ev.reason, ev.stream_id) == ("alert_end", "paused", "cam")
        assert ev.to_json()["reason"] == "paused"
        assert gauge() == 0
        assert (await harness.client.post("/streams/cam/resume", headers=AUTH)).status == 200
        assert [e.kind for e in await events(3)][2] == "alert_start"
        assert (await harness.client.delete("/streams/cam", headers=AUTH)).status in (200, 204)
        ev = (await events(4))[3]
        assert (ev.kind, ev.reason) == ("alert_end", "deleted")
        # a shutdown ends an active alert too, and says so
        r = await harness.client.put(
            "/streams/cam2", json={"url": str(clip), "loop": True}, headers=AUTH)
        assert r.status == 201
        assert [e.kind for e in await events(5)][4] == "alert_start"
        await harness.manager.stop()
        ev = (await events(6))[5]
        assert (ev.kind, ev.reason, ev.stream_id) == ("alert_end", "shutdown", "cam2")
    finally:
        await teardown(harness, engine, client)
