"""What was flagged, over HTTP: evidence records and stream thumbnails (aiohttp routes).

Routes (behind the API's bearer token; every answer ``Cache-Control: no-store``, so no
browser or proxy keeps an image; images and tokens are never logged)::

    GET /evidence/{eid}              the record (JSON), with the URLs of its files
    GET /evidence/{eid}/clip.mp4     the window's 24 sampled frames, H.264
    GET /evidence/{eid}/sheet.jpg    the contact sheet
    GET /streams/{id}/thumbnail      the stream's latest retained frame (JPEG)

``{eid}`` matches :data:`~monitor.live.evidence.recorder.EVIDENCE_ID_PATTERN` (one path
component: no traversal); an unknown, malformed or not yet written record is 404, as is
a thumbnail of a stream with no retained frame, or any thumbnail with
``serve.ui.thumbnails`` off. Without evidence configured (``serve.evidence.dir``) the
routes answer 404 ``evidence_off``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from .evidence.recorder import EvidenceRecorder
from .evidence.writer import CLIP, RECORD, SHEET

NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
"""Headers of every answer here: nothing cached, no content sniffing."""

_EID = r"{eid:[0-9]{13}-[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}-[0-9]{1,20}}"
_SID = r"{id:[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}}"
_FILES = {CLIP: "video/mp4", SHEET: "image/jpeg"}


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status,
                             headers=NO_STORE)


def add_review_routes(
    app: web.Application,
    recorder: EvidenceRecorder | None,
    check_auth: Callable[[web.Request], web.Response | None],
    thumbnails: bool = True,
) -> None:
    """Mount the routes of the module docstring on ``app``; ``check_auth(request)`` is
    the API's bearer check (None: allowed, else the refusal to send)."""

    def guard(request: web.Request) -> web.Response | None:
        if (deny := check_auth(request)) is not None:
            deny.headers.update(NO_STORE)
            return deny
        if recorder is None:
            return _error(404, "evidence_off", "evidence is off (serve.evidence.dir)")
        return None

    async def record(request: web.Request) -> web.Response:
        if (deny := guard(request)) is not None:
            return deny
        assert recorder is not None
        eid = request.match_info["eid"]
        folder = recorder.record_dir(eid)
        if folder is None:
            return _error(404, "not_found", "no such evidence record (yet)")
        body: dict[str, Any] = json.loads((folder / RECORD).read_text(encoding="utf-8"))
        body["urls"] = {"clip": f"/evidence/{eid}/{CLIP}", "sheet": f"/evidence/{eid}/{SHEET}"}
        return web.json_response(body, headers=NO_STORE)

    def file(name: str) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.StreamResponse:
            if (deny := guard(request)) is not None:
                return deny
            assert recorder is not None
            folder = recorder.record_dir(request.match_info["eid"])
            if folder is None:
                return _error(404, "not_found", "no such evidence record (yet)")
            # FileResponse answers Range requests: a <video> element seeks with them
            return web.FileResponse(folder / name,
                                    headers={**NO_STORE, "Content-Type": _FILES[name]})

        return handler

    async def thumbnail(request: web.Request) -> web.Response:
        if (deny := guard(request)) is not None:
            return deny
        assert recorder is not None
        if not thumbnails:
            return _error(404, "thumbnails_off", "thumbnails are off (serve.ui.thumbnails)")
        kept = recorder.thumbnail(request.match_info["id"])
        if kept is None:
            return _error(404, "not_found", "no frame of this stream is retained")
        headers = {**NO_STORE, "X-Restrav-Time": f"{kept.wall_s:.3f}"}
        return web.Response(body=kept.jpeg, content_type="image/jpeg", headers=headers)

    app.router.add_get(f"/evidence/{_EID}", record)
    for name in _FILES:
        app.router.add_get(f"/evidence/{_EID}/{name}", file(name))
    app.router.add_get(f"/streams/{_SID}/thumbnail", thumbnail)


__all__ = ["NO_STORE", "add_review_routes"]
