"""The HTTP control plane of `restrav serve` (aiohttp).

Routes (``{id}``: 1-64 of letters, digits, ``_ . -``)::

    GET    /healthz                 no auth   200 while the process runs
    GET    /readyz                  no auth   200 when model loaded, Redis reachable,
                                              configured streams listed, not draining;
                                              else 503 with reasons
    GET    /metrics                 no auth   Prometheus text format
    GET    /openapi.json            no auth   the OpenAPI 3.1 document of these routes
    GET    /streams                 bearer    {"streams": [status, ...]}
    POST   /streams                 bearer    body: a stream spec with "id"
                                              201 created / 200 unchanged / 409 other spec
    PUT    /streams/{id}            bearer    body: a spec ("id" optional, must match)
                                              201 created / 200 unchanged or replaced
    GET    /streams/{id}            bearer    200 status / 404
    DELETE /streams/{id}            bearer    204 (also when absent: idempotent)
    POST   /streams/{id}/pause      bearer    200 status / 404
    POST   /streams/{id}/resume     bearer    200 status / 404
    GET    /streams/{id}/thumbnail  bearer    the latest sampled frame, small (JPEG) / 404
    GET    /evidence/{eid}          bearer    an evidence record (JSON) / 404
    GET    /evidence/{eid}/clip.mp4, /evidence/{eid}/sheet.jpg    its files
    POST   /evidence/{eid}/ack      operator  acknowledge it (on restrav:events, by name)
    GET    /events                  bearer    recent events (alerts, changes, acks, states), newest
                                              first (Redis, else memory)
                                              (:mod:`monitor.live.review`; no-store)

Control routes need ``Authorization: Bearer <token>`` (constant-time compare) of a
named token (:func:`authorize`): reads (GET) a ``viewer`` or ``operator`` token, changes
an ``operator`` token (403 for a viewer's); each change is logged with the token's
name, never the token. Without any token they answer 503 (control plane disabled). Bodies
are JSON objects of at most ``max_body_bytes`` (413 beyond), validated by
:class:`~monitor.config.StreamSpec` (unknown fields refused); errors are JSON
``{"error": {"code", "message"}}`` with 400 (not JSON, nested deeper than
32 levels, a malformed body), 401, 404, 409, 413,
403 (a viewer token), 415 (not JSON content type), 422 (invalid spec) or 429 (too many
streams).
A refused request changes nothing. Every request is counted in
``restrav_api_requests_total{route,code}``.

Other components (WHIP) add their routes to the application returned by
:func:`create_app` and may use :func:`check_bearer` and :func:`json_error`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError
from redis.exceptions import RedisError

from ..config import ApiSettings, StreamSpec
from ..errors import InputError, RestravError
from ..metrics import Exposition, StreamMetrics
from .alerts import StreamEvent
from .evidence.recorder import EvidenceRecorder
from .http_guard import JsonTooDeep, loads_json
from .openapi import openapi_document
from .review import add_review_routes
from .service import StreamManager
from .sinks.eventlog import EventLog
from .tokens import PRINCIPAL_KEY, ROLES, NamedToken, authorize, named_tokens

log = logging.getLogger("restrav.api")

ReadyCheck = Callable[[], Awaitable[tuple[bool, str]]]
"""An async check for /readyz: returns (ok, reason)."""

CTX_KEY: web.AppKey[ApiContext] = web.AppKey("restrav_ctx")
EXPOSITION_KEY: web.AppKey[Exposition] = web.AppKey("restrav_exposition")


@dataclass
class ApiContext:
    """What the API serves: the stream manager, metrics and readiness checks."""

    manager: StreamManager
    metrics: StreamMetrics
    settings: ApiSettings
    token: str | None
    ready_checks: dict[str, ReadyCheck] = field(default_factory=dict)
    draining: bool = False
    evidence: EvidenceRecorder | None = None
    """Evidence records and thumbnails (:mod:`monitor.live.review`); None: off."""
    thumbnails: bool = True
    events: EventLog | None = None
    """The recent events ``GET /events`` lists (:class:`~monitor.live.sinks.EventLog`)."""
    tokens: tuple[NamedToken, ...] | None = None
    """Who may call: None builds them from ``settings.tokens`` and ``token`` (an operator
    token named ``operator``)."""

    def __post_init__(self) -> None:
        if self.tokens is None:
            self.tokens = named_tokens(self.settings, self.token)


def json_error(status: int, code: str, message: str) -> web.Response:
    """A JSON error response ``{"error": {"code", "message"}}``."""
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def check_bearer(request: web.Request, token: str | None) -> web.Response | None:
    """None when the request carries the bearer token, else the error response to send."""
    if token is None:
        return json_error(
            503, "control_disabled",
            "the control API is disabled: set serve.api.token or serve.api.token_file",
        )
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode("utf-8", "replace"), token.encode("utf-8")
    ):
        resp = json_error(401, "unauthorized", "missing or wrong bearer token")
        resp.headers["WWW-Authenticate"] = 'Bearer realm="restrav"'
        return resp
    return None


def _route_name(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


@web.middleware
async def _count_and_guard(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    ctx = request.app[CTX_KEY]
    try:
        resp = await handler(request)
    except web.HTTPRequestEntityTooLarge:
        resp = json_error(
            413, "too_large", f"body exceeds {ctx.settings.max_body_bytes} bytes"
        )
    except web.HTTPException as exc:
        resp = json_error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
    except HttpProcessingError as exc:  # a broken body (chunking, encoding) read by a handler
        resp = json_error(400, "bad_request", f"malformed request body ({type(exc).__name__})")
    ctx.metrics.api_requests.labels(_route_name(request), str(resp.status)).inc()
    return resp


def _auth(request: web.Request, role: str = "viewer") -> web.Response | None:
    ctx = request.app[CTX_KEY]
    assert ctx.tokens is not None
    return authorize(request, ctx.tokens, role)


def _changed(request: web.Request, what: str, stream_id: str) -> None:
    """Log a change, and put it on ``restrav:events``, with the name of the token that
    made it (never the token)."""
    who: NamedToken = request[PRINCIPAL_KEY]
    log.info("stream %s: %s by token %r", stream_id, what, who.name)
    request.app[CTX_KEY].manager.sink.publish_event(
        StreamEvent(stream_id, "control", time.time(), who.name, action=what))


async def _read_spec(request: web.Request, stream_id: str | None) -> StreamSpec | web.Response:
    ctx = request.app[CTX_KEY]
    if request.content_length is not None and request.content_length > ctx.settings.max_body_bytes:
        return json_error(413, "too_large", f"body exceeds {ctx.settings.max_body_bytes} bytes")
    if request.content_type != "application/json":
        return json_error(415, "unsupported_media_type", "send Content-Type: application/json")
    raw = await request.read()  # bounded by client_max_size
    try:
        body = loads_json(raw)
    except JsonTooDeep as exc:
        return json_error(400, "too_deep", f"{exc}; a stream spec is a flat object")
    except (ValueError, UnicodeDecodeError):
        return json_error(400, "bad_json", "body is not valid JSON")
    if not isinstance(body, dict):
        return json_error(422, "invalid", "body must be a JSON object (a stream spec)")
    if stream_id is not None:
        if "id" in body and body["id"] != stream_id:
            return json_error(422, "invalid", "the body's id does not match the URL")
        body["id"] = stream_id
    try:
        return StreamSpec.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        return json_error(422, "invalid", problems[:2000])


async def _add(
    request: web.Request, spec: StreamSpec, conflict_if_different: bool
) -> web.Response:
    ctx = request.app[CTX_KEY]
    mgr = ctx.manager
    existing = mgr.spec(spec.id)
    if existing is None and len(mgr) >= ctx.settings.max_streams:
        return json_error(429, "too_many_streams", f"at most {ctx.settings.max_streams} streams")
    if conflict_if_different and existing is not None and existing != spec:
        return json_error(
            409, "conflict", f"stream {spec.id!r} exists with another spec; PUT to replace it"
        )
    try:
        outcome = await mgr.add(spec, from_api=True)
    except InputError as exc:
        return json_error(422, exc.code, exc.message)
    except RestravError as exc:
        return json_error(503, exc.code, exc.message)
    if outcome != "unchanged":
        _changed(request, outcome, spec.id)
    status = mgr.get(spec.id)
    assert status is not None
    code = 201 if outcome == "created" else 200
    return web.json_response({"outcome": outcome, "stream": status.to_json()}, status=code)


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok"})


async def readiness(ctx: ApiContext) -> dict[str, str]:
    """Run every readiness check now; the reasons it is not ready (empty: ready).

    Sets ``restrav_serve_ready`` to the result, so the gauge is exactly what /readyz
    would answer at this moment."""
    reasons: dict[str, str] = {}
    if ctx.draining:
        reasons["draining"] = "shutting down"
    if not ctx.manager.restored:
        reasons["streams"] = "configured streams not listed yet"
    for name, check in ctx.ready_checks.items():
        ok, why = await check()
        if not ok:
            reasons[name] = why
    ctx.metrics.ready.set(0.0 if reasons else 1.0)
    return reasons


async def readyz(request: web.Request) -> web.Response:
    """Readiness: every check passes and the service is not draining."""
    reasons = await readiness(request.app[CTX_KEY])
    body = {"ready": not reasons, "reasons": reasons}
    return web.json_response(body, status=503 if reasons else 200)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus exposition. Readiness is evaluated first: a scraper that never calls
    /readyz (a bare Prometheus) still reads the current ``restrav_serve_ready``."""
    await readiness(request.app[CTX_KEY])
    resp = web.Response(body=await request.app[EXPOSITION_KEY].text())
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


async def openapi_json(request: web.Request) -> web.Response:
    """The OpenAPI document of these routes (generated from the pydantic models)."""
    return web.json_response(openapi_document())


async def list_streams(request: web.Request) -> web.Response:
    """Every stream's status."""
    if (deny := _auth(request)) is not None:
        return deny
    mgr = request.app[CTX_KEY].manager
    return web.json_response({"streams": [s.to_json() for s in mgr.list()]})


async def post_stream(request: web.Request) -> web.Response:
    """Add a stream (idempotent by id)."""
    if (deny := _auth(request, "operator")) is not None:
        return deny
    spec = await _read_spec(request, None)
    if isinstance(spec, web.Response):
        return spec
    return await _add(request, spec, conflict_if_different=True)


async def put_stream(request: web.Request) -> web.Response:
    """Create or replace a stream."""
    if (deny := _auth(request, "operator")) is not None:
        return deny
    spec = await _read_spec(request, request.match_info["id"])
    if isinstance(spec, web.Response):
        return spec
    return await _add(request, spec, conflict_if_different=False)


async def get_stream(request: web.Request) -> web.Response:
    """One stream's status."""
    if (deny := _auth(request)) is not None:
        return deny
    status = request.app[CTX_KEY].manager.get(request.match_info["id"])
    if status is None:
        return json_error(404, "not_found", "no such stream")
    return web.json_response(status.to_json())


async def delete_stream(request: web.Request) -> web.Response:
    """Remove a stream (204 whether or not it existed)."""
    if (deny := _auth(request, "operator")) is not None:
        return deny
    try:
        removed = await request.app[CTX_KEY].manager.remove(request.match_info["id"])
    except RestravError as exc:  # replicas: the shared desired set is unreachable
        return json_error(503, exc.code, exc.message)
    if removed:
        _changed(request, "removed", request.match_info["id"])
    return web.Response(status=204)


async def pause_stream(request: web.Request) -> web.Response:
    """Pause a stream."""
    return await _set_paused(request, True)


async def resume_stream(request: web.Request) -> web.Response:
    """Resume a paused stream."""
    return await _set_paused(request, False)


async def _set_paused(request: web.Request, pause: bool) -> web.Response:
    """Pause or resume the stream named in the path (an operator's change, recorded)."""
    if (deny := _auth(request, "operator")) is not None:
        return deny
    sid = request.match_info["id"]
    manager = request.app[CTX_KEY].manager
    try:
        status = await (manager.pause(sid) if pause else manager.resume(sid))
    except RestravError as exc:  # replicas: the shared desired set is unreachable
        return json_error(503, exc.code, exc.message)
    if status is None:
        return json_error(404, "not_found", "no such stream")
    _changed(request, "paused" if pause else "resumed", sid)
    return web.json_response(status.to_json())


_ID = r"{id:[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}}"


def create_app(ctx: ApiContext) -> web.Application:
    """The aiohttp application (add more routes to it before it starts)."""
    app = web.Application(
        client_max_size=ctx.settings.max_body_bytes, middlewares=[_count_and_guard]
    )
    app[CTX_KEY], app[EXPOSITION_KEY] = ctx, Exposition(ctx.metrics.registry)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/streams", list_streams)
    app.router.add_post("/streams", post_stream)
    app.router.add_put(f"/streams/{_ID}", put_stream)
    app.router.add_get(f"/streams/{_ID}", get_stream)
    app.router.add_delete(f"/streams/{_ID}", delete_stream)
    app.router.add_post(f"/streams/{_ID}/pause", pause_stream)
    app.router.add_post(f"/streams/{_ID}/resume", resume_stream)
    add_review_routes(app, ctx.evidence, _auth, ctx.thumbnails,
                      ctx.manager.sink.publish_event, ctx.events)
    return app


def redis_ready_check(client: Any, timeout_s: float) -> ReadyCheck:
    """A /readyz check that PINGs Redis through ``client`` (a redis.asyncio client)."""

    async def check() -> tuple[bool, str]:
        try:
            await asyncio.wait_for(client.ping(), timeout_s)
        except (RedisError, OSError, TimeoutError) as exc:
            return False, f"redis unreachable ({type(exc).__name__})"
        return True, ""

    return check


def resolve_token(settings: ApiSettings) -> str | None:
    """The bearer token from ``token`` or ``token_file`` (stripped); None if neither."""
    if settings.token is not None:
        value = settings.token.get_secret_value().strip()
        return value or None
    if settings.token_file is not None:
        try:
            value = settings.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            from ..errors import ConfigError

            raise ConfigError(
                f"cannot read serve.api.token_file {settings.token_file}: {exc.strerror}"
            ) from exc
        return value or None
    return None


__all__ = [
    "ROLES",
    "ApiContext",
    "NamedToken",
    "ReadyCheck",
    "authorize",
    "check_bearer",
    "create_app",
    "json_error",
    "named_tokens",
    "readiness",
    "redis_ready_check",
    "resolve_token",
]

