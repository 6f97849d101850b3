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
from monitor.api import ApiContext, create_app
from monitor.config import ServeSettings, StreamSpec, load_settings
from monitor.embed import Embedder, load_backbone
from monitor.engine import Engine
from monitor.metrics import StreamMetrics
from monitor.service import RedisDesiredStore, StreamManager
from monitor.sinks import MemorySink

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
                token: str | None = TOKEN) -> tuple[Harness, Engine, Any]:
    metrics = StreamMetrics(CollectorRegistry())
    engine = Engine(embedder, None, settings.engine, metrics)
    engine.start(asyncio.get_running_loop())
    sink = MemorySink()
    await sink.start()
    client = aioredis.from_url(redis_url)
    manager = StreamManager(engine, sink, settings, metrics, RedisDesiredStore(client))
    ctx = ApiContext(manager=manager, metrics=metrics, settings=settings.api, token=token)
    tc: TestClient[Any, Any] = TestClient(TestServer(create_app(ctx)))
    await tc.start_server()
    return Harness(tc, manager, sink, metrics, redis_url), engine, client


@pytest.fixture
async def h(embedder: Embedder, redis_url: str) -> AsyncIterator[Harness]:
    harness, engine, client = await build(
        embedder, redis_url, serve_settings(allow_file_sources=True)
    )
    try:
        yield harness
    finally:
        await harness.manager.stop()
        await engine.drain(10)
        await harness.sink.aclose()
        await harness.client.close()
        await client.aclose()


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
    from monitor.api import resolve_token
    from monitor.config import ApiSettings

    f = tmp_path / "token"
    f.write_text("from-file\n")
    assert resolve_token(ApiSettings(token_file=f)) == "from-file"
    assert resolve_token(ApiSettings(token=SecretStr("x"))) == "x"
    assert resolve_token(ApiSettings()) is None
