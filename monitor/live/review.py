"""What was flagged, over HTTP: evidence records and stream thumbnails (aiohttp routes).

Routes (behind the API's bearer token; every answer ``Cache-Control: no-store``, so no
browser or proxy keeps an image; images and tokens are never logged)::

    GET /evidence/{eid}              the record (JSON), with the URLs of its files
    GET /evidence/{eid}/clip.mp4     the window's 24 sampled frames, H.264
    GET /evidence/{eid}/sheet.jpg    the contact sheet
    GET /streams/{id}/thumbnail      the stream's latest sampled frame, small (JPEG)
    GET /events?limit=N[&kind=K,...] recent events, newest first (at most MAX_EVENTS):
                                     alerts (with their evidence ids), who changed which
                                     stream, acknowledgements, streams' state changes;
                                     ``kind`` keeps only those kinds (EventLog.KINDS)
    POST /evidence/{eid}/ack         (operator) acknowledge a record: an ``acknowledged``
                                     event with the token's name on ``restrav:events``

``{eid}`` matches :data:`~monitor.live.evidence.recorder.EVIDENCE_ID_PATTERN` (one path
component: no traversal); an unknown, malformed or not yet written record is 404, as is
a thumbnail of a stream with no sampled frame yet. Without evidence configured
(``serve.evidence.dir``) the evidence routes answer 404 ``evidence_off``; with
``serve.ui.thumbnails`` off (no recorder, or one without thumbnails) every thumbnail is
404 ``thumbnails_off``. Thumbnails do not need evidence.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from .alerts import StreamEvent
from .evidence.recorder import EvidenceRecorder
from .evidence.writer import CLIP, RECORD, SHEET
from .sinks.eventlog import KINDS, EventLog
from .tokens import PRINCIPAL_KEY

log = logging.getLogger("restrav.api")

NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
"""Headers of every answer here: nothing cached, no content sniffing."""

_EID = r"{eid:[0-9]{13}-[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}-[0-9]{1,20}}"
_SID = r"{id:[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}}"
_FILES = {CLIP: "video/mp4", SHEET: "image/jpeg"}
MAX_EVENTS = 500
"""Most events one ``GET /events`` returns (and the event log keeps)."""
EVENTS_QUERY = frozenset({"limit", "kind"})
"""``GET /events``'s query parameters; any other is refused (400 ``bad_query``)."""


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status,
                             headers=NO_STORE)


def add_review_routes(
    app: web.Application,
    recorder: EvidenceRecorder | None,
    check_auth: Callable[..., web.Response | None],
    thumbnails: bool = True,
    publish: Callable[[StreamEvent], None] | None = None,
    events: EventLog | None = None,
) -> None:
    """Mount the routes of the module docstring on ``app``; ``check_auth(request, role)``
    is the API's token check (None: allowed, else the refusal to send; it leaves the
    caller's token at ``request[PRINCIPAL_KEY]``); ``publish`` takes acknowledgements;
    ``events`` is the log ``GET /events`` reads (None: 404)."""

    def guard(request: web.Request, role: str = "viewer") -> web.Response | None:
        if (deny := check_auth(request, role)) is not None:
            deny.headers.update(NO_STORE)
            return deny
        if recorder is None or not recorder.evidence_on:
            return _error(404, "evidence_off", "evidence is off (serve.evidence.dir)")
        return None

    def written(request: web.Request, role: str = "viewer") -> Path | web.Response:
        """The folder of the request's record, or the refusal (token, off, 404)."""
        if (deny := guard(request, role)) is not None:
            return deny
        assert recorder is not None
        folder = recorder.record_dir(request.match_info["eid"])
        if folder is None:
            return _error(404, "not_found", "no such evidence record (yet)")
        return folder

    async def record(request: web.Request) -> web.Response:
        if isinstance(folder := written(request), web.Response):
            return folder
        eid = request.match_info["eid"]
        body: dict[str, Any] = json.loads((folder / RECORD).read_text(encoding="utf-8"))
        body["urls"] = {"clip": f"/evidence/{eid}/{CLIP}", "sheet": f"/evidence/{eid}/{SHEET}"}
        return web.json_response(body, headers=NO_STORE)

    def file(name: str) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.StreamResponse:
            if isinstance(folder := written(request), web.Response):
                return folder
            # FileResponse answers Range requests: a <video> element seeks with them
            return web.FileResponse(folder / name,
                                    headers={**NO_STORE, "Content-Type": _FILES[name]})

        return handler

    async def thumbnail(request: web.Request) -> web.Response:
        if (deny := check_auth(request, "viewer")) is not None:
            deny.headers.update(NO_STORE)
            return deny
        if not thumbnails or recorder is None or recorder.thumbs is None:
            return _error(404, "thumbnails_off", "thumbnails are off (serve.ui.thumbnails)")
        kept = recorder.thumbnail(request.match_info["id"])
        if kept is None:
            return _error(404, "not_found", "no sampled frame of this stream yet")
        headers = {**NO_STORE, "X-Restrav-Time": f"{kept.wall_s:.3f}"}
        return web.Response(body=kept.jpeg, content_type="image/jpeg", headers=headers)

    async def acknowledge(request: web.Request) -> web.Response:
        if isinstance(folder := written(request, "operator"), web.Response):
            return folder
        eid = request.match_info["eid"]
        rec = json.loads((folder / RECORD).read_text(encoding="utf-8"))
        who = request[PRINCIPAL_KEY].name
        event = StreamEvent(str(rec["stream"]), "acknowledged", time.time(), who, evidence=eid)
        log.info("evidence %s acknowledged by token %r", eid, who)
        if publish is not None:
            publish(event)
        return web.json_response(event.to_json(), headers=NO_STORE)

    async def recent_events(request: web.Request) -> web.Response:
        if (deny := check_auth(request, "viewer")) is not None:
            deny.headers.update(NO_STORE)
            return deny
        if events is None:
            return _error(404, "events_off", "no event log in this process")
        if unknown := sorted(set(request.query) - EVENTS_QUERY):
            # a misspelt filter (`?knd=alert_start`) must not answer every event
            return _error(400, "bad_query", f"unknown query parameter(s) {unknown}: "
                          "/events takes limit and kind")
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_EVENTS:
            return _error(400, "bad_limit", f"limit: an integer, 1-{MAX_EVENTS}")
        kinds: frozenset[str] | None = None
        if "kind" in request.query:
            kinds = frozenset(k for k in request.query["kind"].split(",") if k)
            if not kinds or not kinds <= KINDS:
                return _error(400, "bad_kind", "kind: a comma-separated list of "
                              + ", ".join(sorted(KINDS)))
        recent, source = await events.recent(limit, kinds)
        return web.json_response({"events": recent, "source": source}, headers=NO_STORE)

    app.router.add_get("/events", recent_events)
    app.router.add_get(f"/evidence/{_EID}", record)
    app.router.add_post(f"/evidence/{_EID}/ack", acknowledge)
    for name in _FILES:
        app.router.add_get(f"/evidence/{_EID}/{name}", file(name))
    app.router.add_get(f"/streams/{_SID}/thumbnail", thumbnail)


__all__ = ["EVENTS_QUERY", "NO_STORE", "add_review_routes"]
