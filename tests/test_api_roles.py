"""Named API tokens with roles: a viewer reads, an operator also changes; every change is
logged with the token's name and never its value; today's single token is an operator.
Real Redis, the real control API (tests/test_api.py's harness)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import ValidationError

from monitor.config import ApiSettings, ServeSettings
from monitor.core.embed import Embedder

from . import test_api
from .test_api import TOKEN, Harness, build, teardown

embedder = test_api.embedder  # the module-scoped tiny embedder of test_api

VIEWER = "viewer-token-0123456789"
ALICE = "alice-operator-0123456789"
SPEC = {"id": "gate", "url": "rtsp://127.0.0.1:9/none", "paused": True}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def h(embedder: Embedder, redis_url: str) -> AsyncIterator[Harness]:
    settings = ServeSettings(api=ApiSettings(tokens={
        "wall-screen": {"token": VIEWER, "role": "viewer"},  # type: ignore[dict-item]
        "alice": {"token": ALICE, "role": "operator"},  # type: ignore[dict-item]
    }))
    harness, engine, client = await build(embedder, redis_url, settings, token=TOKEN)
    try:
        yield harness
    finally:
        await teardown(harness, engine, client)


async def test_a_viewer_reads_and_is_refused_every_change(h: Harness) -> None:
    c = h.client
    assert (await c.post("/streams", json=SPEC, headers=bearer(ALICE))).status == 201
    for path in ("/streams", "/streams/gate", "/streams/gate/thumbnail"):
        r = await c.get(path, headers=bearer(VIEWER))
        # the thumbnail passes the token check and finds no recorder (this harness has none)
        assert r.status == (404 if path.endswith("thumbnail") else 200), path
    changes: list[tuple[str, str, Any]] = [
        ("post", "/streams", {**SPEC, "id": "other"}), ("put", "/streams/gate", SPEC),
        ("delete", "/streams/gate", None), ("post", "/streams/gate/pause", None),
        ("post", "/streams/gate/resume", None),
    ]
    for method, path, body in changes:
        r = await c.request(method, path, json=body, headers=bearer(VIEWER))
        assert r.status == 403, (method, path, r.status)
        err = (await r.json())["error"]
        assert err["code"] == "forbidden" and "wall-screen" in err["message"]
        assert VIEWER not in err["message"]
    assert set(h.desired()) == {"gate"} and h.manager.spec("gate") is not None  # unchanged


async def test_changes_are_logged_with_the_token_name_only(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    c = h.client
    caplog.set_level("INFO", logger="restrav.api")
    assert (await c.post("/streams", json=SPEC, headers=bearer(ALICE))).status == 201
    assert (await c.post("/streams/gate/resume", headers=bearer(TOKEN))).status == 200
    assert (await c.delete("/streams/gate", headers=bearer(ALICE))).status == 204
    lines = [r.getMessage() for r in caplog.records if r.name == "restrav.api"]
    assert lines == ["stream gate: created by token 'alice'",
                     "stream gate: resumed by token 'operator'",  # the single token of today
                     "stream gate: removed by token 'alice'"]
    assert not any(t in caplog.text for t in (ALICE, TOKEN, VIEWER))
    # and on restrav:events (the harness's memory sink): who, what, when
    await h.sink.flush(10)
    control = [e.to_json() for e in h.sink.changes]
    assert [(e["stream"], e["kind"], e["action"], e["by"]) for e in control] == [
        ("gate", "control", "created", "alice"), ("gate", "control", "resumed", "operator"),
        ("gate", "control", "removed", "alice")]
    assert not any(t in str(control) for t in (ALICE, TOKEN, VIEWER))


async def test_only_an_operator_acknowledges(h: Harness) -> None:
    path = "/evidence/1796640000123-gate-4/ack"
    r = await h.client.post(path, headers=bearer(VIEWER))
    assert r.status == 403
    r = await h.client.post(path, headers=bearer(ALICE))  # allowed; this harness keeps none
    assert r.status == 404 and (await r.json())["error"]["code"] == "evidence_off"


async def test_unknown_or_missing_tokens_get_401(h: Harness) -> None:
    for headers in ({}, bearer("not-a-token-at-all-xx"), {"Authorization": f"Basic {ALICE}"}):
        r = await h.client.get("/streams", headers=headers)
        assert r.status == 401 and r.headers["WWW-Authenticate"] == 'Bearer realm="restrav"'


def test_named_tokens_are_long_distinct_and_well_named() -> None:
    with pytest.raises(ValidationError, match="at least 16"):
        ApiSettings(tokens={"a": {"token": "short", "role": "viewer"}})  # type: ignore[dict-item]
    with pytest.raises(ValidationError, match="same value"):
        ApiSettings(tokens={"a": {"token": ALICE}, "b": {"token": ALICE}})  # type: ignore[dict-item]
    with pytest.raises(ValidationError, match="token name"):
        ApiSettings(tokens={"a b": {"token": ALICE}})  # type: ignore[dict-item]
    with pytest.raises(ValidationError):
        ApiSettings(tokens={"a": {"token": ALICE, "role": "admin"}})  # type: ignore[dict-item]
