"""The WHIP endpoint (RFC 9725): publishers POST an SDP offer, we answer and score their video.

Routes (added to an aiohttp application by :meth:`WhipEndpoint.add_routes`):

``OPTIONS /whip/{stream_id}``
    CORS preflight; ``204`` with ``Accept-Post: application/sdp``. No token needed.
``POST /whip/{stream_id}``
    Body: an SDP offer, ``Content-Type: application/sdp``, header
    ``Authorization: Bearer <token>``. ``201 Created`` with the SDP answer, a
    ``Location`` naming the session resource and an ``ETag``. Refusals, each
    counted in ``restrav_webrtc_requests_rejected_total{reason}`` with a JSON
    ``{"error": {"code", "message"}}`` body:
    401 wrong or missing token (with ``WWW-Authenticate: Bearer``), 400 a
    malformed stream id or bad SDP (unparseable, no video to receive), 404 a
    stream id that is not declared, 415 another content type, 413 an offer over
    ``max_offer_bytes``, 409 a stream that already has a publisher, 503 the
    session limit reached (with ``Retry-After``).
``DELETE /whip/{stream_id}/{session_id}``
    Ends the session (``200``); ``404`` for an unknown session. Token required.
``GET /whip/{stream_id}/score``
    The stream's state and latest score, for the publisher (WHIP token).
``PATCH /whip/{stream_id}/{session_id}``
    ``405``: trickle ICE and ICE restarts are not supported (the answer carries
    every candidate), which the RFC allows.
``GET /publish``
    A minimal publisher page (camera or screen, WHIP to this service, the live
    score beside the video).

A session's video track is drained by a :class:`~monitor.webrtc.tracks.TrackSource`
handed to ``on_publish(stream_id, source)``; when the session ends (DELETE,
ICE failure, a publisher silent for ``idle_timeout_s``, no video within
``connect_timeout_s``, shutdown) ``on_unpublish(stream_id, reason)`` is awaited
and the peer connection closed. Audio is answered ``inactive``.

Parts: :mod:`monitor.webrtc.sdp` checks offers and edits answers (aiortc's SDP
parser), :mod:`monitor.webrtc.sessions` holds the sessions, their limits and
watchdogs; this module has the HTTP routes (:class:`WhipEndpoint`);
:mod:`monitor.webrtc.hub` joins them to the stream manager (``WhipHub``,
``attach_webrtc``).
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any

from aiohttp import web

from ..config import WebRTCSettings
from ..metrics import WebRTCMetrics
from .sdp import BadOffer, parse_offer
from .sessions import (
    PublishHook,
    UnpublishHook,
    WhipRefused,
    WhipSession,
    WhipSessions,
    no_publish,
    no_unpublish,
)
from .tracks import SDP_MIME

log = logging.getLogger(__name__)

STREAM_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
"""Stream ids: 1-64 characters, letters, digits, ``_ . -``, not starting with a symbol."""

StatusHook = Callable[[str], dict[str, Any] | None]

__all__ = ["STREAM_ID_RE", "WhipEndpoint", "WhipRefused", "WhipSession"]


class WhipEndpoint:
    """The WHIP HTTP routes (see the module docstring): token, CORS, the offer body and
    refusals; the sessions themselves are :attr:`table` (:class:`WhipSessions`).

    ``token`` is the bearer token publishers present (None: every POST gets
    401). ``is_known(stream_id)`` decides which ids accept publishers (404
    otherwise); ``status_of(stream_id)`` gives the JSON the score route returns
    (None: 404). :class:`WhipHub` supplies all three from the stream manager.
    """

    def __init__(
        self,
        settings: WebRTCSettings,
        *,
        token: str | None,
        metrics: WebRTCMetrics | None = None,
        on_publish: PublishHook = no_publish,
        on_unpublish: UnpublishHook = no_unpublish,
        is_known: Callable[[str], bool] = lambda stream: False,
        status_of: StatusHook = lambda stream: None,
        watchdog_interval_s: float = 0.25,
    ) -> None:
        self.settings = settings
        self._token = token
        self.metrics = metrics
        self.is_known = is_known
        self.status_of = status_of
        self.table = WhipSessions(settings, metrics, on_publish, on_unpublish,
                                  watchdog_interval_s)

    @property
    def sessions(self) -> dict[str, WhipSession]:
        """The live sessions by id."""
        return self.table.sessions

    # --- policy -------------------------------------------------------------------------

    def _authorize(self, request: web.Request) -> None:
        token = self._token
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        ok = (
            token is not None
            and scheme.lower() == "bearer"
            and hmac.compare_digest(
                given.strip().encode("utf-8", "replace"), token.encode("utf-8")
            )
        )
        if not ok:
            msg = (
                "the WHIP endpoint has no token configured (set webrtc.whip_token or "
                "serve.api.token)"
                if token is None
                else "missing or wrong bearer token (send Authorization: Bearer <token>)"
            )
            raise WhipRefused(401, "unauthorized", msg, {"WWW-Authenticate": "Bearer"})

    def _check_stream(self, stream: str) -> None:
        if not STREAM_ID_RE.match(stream):
            raise WhipRefused(
                400,
                "bad_stream_id",
                "stream ids are 1-64 letters, digits, '_', '.' or '-', starting with a "
                "letter or digit",
            )
        if not self.is_known(stream):
            raise WhipRefused(
                404,
                "unknown_stream",
                f"no stream {stream!r} accepts publishers here; declare it first with "
                'kind "whip" (serve.streams or POST /streams), or set webrtc.whip_any_stream',
            )

    # --- CORS ---------------------------------------------------------------------------

    def _cors(self, request: web.Request) -> dict[str, str]:
        origins = self.settings.cors_origins
        origin = request.headers.get("Origin")
        if "*" in origins:
            allow = "*"
        elif origin is not None and origin in origins:
            allow = origin
        else:
            return {}
        h = {
            "Access-Control-Allow-Origin": allow,
            "Access-Control-Allow-Methods": "OPTIONS, POST, DELETE, PATCH",
            "Access-Control-Allow-Headers": "Authorization, Content-Type, If-Match",
            "Access-Control-Expose-Headers": "Location, ETag, Link, Accept-Post, Retry-After",
            "Access-Control-Max-Age": "600",
        }
        if allow != "*":
            h["Vary"] = "Origin"
        return h

    def _refuse(self, request: web.Request, exc: WhipRefused) -> web.Response:
        if self.metrics is not None:
            self.metrics.requests_rejected.labels("whip", exc.reason).inc()
        log.info(
            "WHIP %s %s refused: %d %s (%s)", request.method, request.path, exc.status,
            exc.reason, exc.message[:200].encode("unicode_escape").decode("ascii"),
        )
        return web.json_response(
            {"error": {"code": exc.reason, "message": exc.message}},
            status=exc.status,
            headers={**self._cors(request), **exc.headers},
        )

    # --- routes -------------------------------------------------------------------------

    def add_routes(self, app: web.Application, publisher_page: bool = True) -> None:
        """Mount the WHIP routes (and the publisher page) on ``app``; close sessions on cleanup."""
        app.router.add_route("OPTIONS", "/whip/{stream}", self.handle_options)
        app.router.add_route("POST", "/whip/{stream}", self.handle_post)
        app.router.add_route("GET", "/whip/{stream}/score", self.handle_score)
        app.router.add_route("OPTIONS", "/whip/{stream}/{session}", self.handle_options)
        app.router.add_route("DELETE", "/whip/{stream}/{session}", self.handle_delete)
        app.router.add_route("PATCH", "/whip/{stream}/{session}", self.handle_patch)
        if publisher_page:
            app.router.add_get("/publish", self.handle_page)

        async def _cleanup(_: web.Application) -> None:
            await self.aclose()

        app.on_cleanup.append(_cleanup)

    async def handle_options(self, request: web.Request) -> web.Response:
        """CORS preflight and ``Accept-Post`` (RFC 9725 section 4.2)."""
        return web.Response(
            status=204, headers={**self._cors(request), "Accept-Post": SDP_MIME}
        )

    async def handle_patch(self, request: web.Request) -> web.Response:
        """Trickle ICE / ICE restart: not supported (405, as the RFC allows)."""
        return web.json_response(
            {"error": {"code": "not_supported", "message": "trickle ICE is not supported"}},
            status=405,
            headers={**self._cors(request), "Allow": "OPTIONS, POST, DELETE"},
        )

    async def handle_score(self, request: web.Request) -> web.Response:
        """The stream's state and latest score, for publishers (WHIP token, not the API's)."""
        stream = request.match_info["stream"]
        try:
            self._authorize(request)
            status = self.status_of(stream) if STREAM_ID_RE.match(stream) else None
            if status is None:
                raise WhipRefused(404, "unknown_stream", f"no stream {stream!r}")
        except WhipRefused as exc:
            return self._refuse(request, exc)
        return web.json_response(
            status, headers={**self._cors(request), "Cache-Control": "no-store"}
        )

    async def handle_page(self, request: web.Request) -> web.Response:
        """The publisher page (static HTML and JavaScript)."""
        html = resources.files("monitor.live").joinpath("static/publish.html").read_text("utf-8")
        return web.Response(
            text=html,
            content_type="text/html",
            headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"},
        )

    async def handle_post(self, request: web.Request) -> web.Response:
        """Create a session from an SDP offer (see the module docstring for statuses)."""
        stream = request.match_info["stream"]
        try:
            self._authorize(request)
            self._check_stream(stream)
            offer = await self._read_offer(request)
            session, answer = await self.table.open(stream, offer)
        except WhipRefused as exc:
            return self._refuse(request, exc)
        return web.Response(
            status=201,
            body=answer.encode("utf-8"),
            headers={
                **self._cors(request),
                "Content-Type": SDP_MIME,
                "Location": session.location,
                "ETag": f'"{session.etag}"',
            },
        )

    async def _read_offer(self, request: web.Request) -> str:
        ctype = request.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
        if ctype != SDP_MIME:
            raise WhipRefused(
                415, "media_type", f"send the offer as {SDP_MIME}, not {ctype or 'nothing'}"
            )
        limit = self.settings.max_offer_bytes
        if request.content_length is not None and request.content_length > limit:
            raise WhipRefused(413, "too_large", f"the offer exceeds {limit} bytes")
        # read to the end (a chunked body arrives in pieces), never more than limit + 1
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = await request.content.read(limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise WhipRefused(413, "too_large", f"the offer exceeds {limit} bytes")
        body = b"".join(chunks)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WhipRefused(400, "bad_sdp", "the offer is not UTF-8 text") from exc
        try:
            parse_offer(text)
        except BadOffer as exc:
            raise WhipRefused(400, "bad_sdp", str(exc)) from exc
        return text

    async def handle_delete(self, request: web.Request) -> web.Response:
        """End the session named by the URL (``200``), ``404`` if there is none."""
        stream = request.match_info["stream"]
        session_id = request.match_info["session"]
        try:
            self._authorize(request)
            session = self.sessions.get(session_id)
            if session is None or session.stream != stream:
                raise WhipRefused(404, "unknown_session", "no such WHIP session")
        except WhipRefused as exc:
            return self._refuse(request, exc)
        await self.table.end(session_id, "deleted")
        return web.Response(status=200, headers=self._cors(request))

    def session_for(self, stream: str) -> WhipSession | None:
        """The live session publishing ``stream``, if any."""
        return self.table.session_for(stream)

    async def end(self, session_id: str, reason: str) -> bool:
        """End a session (idempotent); False when there is no such session."""
        return await self.table.end(session_id, reason)

    async def end_stream(self, stream: str, reason: str = "removed") -> bool:
        """End the session publishing ``stream`` (the stream was deleted through the API)."""
        session = self.table.session_for(stream)
        return await self.table.end(session.id, reason) if session is not None else False

    async def aclose(self, ids: Iterable[str] | None = None) -> None:
        """End every session (shutdown); later POSTs get 503."""
        await self.table.aclose(ids)
