"""The operator page's HTTP routes: the static page and its event stream.

::

    GET /, GET /ui           no auth   the page (static HTML; it holds no data)
    GET /ui/app.js, app.css  no auth   its script and style
    GET /ui/events           bearer    text/event-stream: snapshot, update..., bye
    GET /ui/streams/{id}     bearer    one stream: status, latest features, timeline

The data comes from a :class:`~monitor.live.livefeed.LiveFeed` (see its module
docstring for why the event stream takes the token in a header).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from typing import Any

from aiohttp import web

from .livefeed import LiveFeed

_PAGE_FILES = {"ui.html": "text/html", "ui.js": "text/javascript", "ui.css": "text/css"}
_SECURITY_HEADERS = {
    # the page loads only its own script and style and talks only to this origin; images
    # and clips are fetched with the token in a header and shown from blob: URLs
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self' data: blob:; media-src blob:; base-uri 'none'; "
    "form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

FEED_KEY: web.AppKey[LiveFeed] = web.AppKey("restrav_livefeed")


def _page_file(name: str) -> bytes:
    return resources.files("monitor.live").joinpath(f"static/{name}").read_bytes()


def add_ui_routes(
    app: web.Application,
    feed: LiveFeed,
    check_auth: Callable[[web.Request], web.Response | None],
) -> None:
    """Mount the page and its event stream on ``app``; drain the feed on app cleanup.

    ``check_auth(request)`` returns None for a request with the API token, else
    the response to send (the API's bearer check).
    """
    files = {name: (_page_file(name), ctype) for name, ctype in _PAGE_FILES.items()}
    app[FEED_KEY] = feed

    def static(name: str) -> Callable[[web.Request], Any]:
        body, ctype = files[name]

        async def handler(request: web.Request) -> web.Response:
            resp = web.Response(body=body, content_type=ctype, charset="utf-8")
            resp.headers.update(_SECURITY_HEADERS)
            return resp

        return handler

    async def events(request: web.Request) -> web.StreamResponse:
        if (deny := check_auth(request)) is not None:
            return deny
        sub = feed.subscribe()
        if isinstance(sub, str):
            why = ("shutting down" if sub == "draining"
                   else f"at most {feed.settings.max_clients} event-stream clients")
            refusal = web.json_response({"error": {"code": sub, "message": why}}, status=503)
            refusal.headers["Retry-After"] = "5"
            return refusal
        resp = web.StreamResponse(headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
        })
        resp.force_close()
        transport = request.transport

        def abort() -> None:
            if transport is not None:
                transport.abort()

        sub.abort = abort
        m = feed.metrics
        try:
            await resp.prepare(request)
            msg: bytes | None = feed.snapshot_message()
            while msg is not None:
                await resp.write(msg)
                if m is not None:
                    m.bytes_sent.inc(len(msg))
                msg = await sub.get()
            await resp.write_eof()
        except ConnectionError:
            pass  # the client left, or was dropped (its transport aborted)
        finally:
            feed.unsubscribe(sub)
        return resp

    async def stream_detail(request: web.Request) -> web.Response:
        if (deny := check_auth(request)) is not None:
            return deny
        d = feed.detail(request.match_info["id"])
        if d is None:
            return web.json_response(
                {"error": {"code": "not_found", "message": "no such stream"}}, status=404
            )
        return web.json_response(d, dumps=lambda o: json.dumps(o, allow_nan=False))

    async def cleanup(app: web.Application) -> None:
        await feed.drain("shutdown")

    app.router.add_get("/", static("ui.html"))
    app.router.add_get("/ui", static("ui.html"))
    app.router.add_get("/ui/app.js", static("ui.js"))
    app.router.add_get("/ui/app.css", static("ui.css"))
    app.router.add_get("/ui/events", events)
    app.router.add_get(r"/ui/streams/{id:[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}}", stream_detail)
    app.on_shutdown.append(cleanup)


__all__ = ["FEED_KEY", "add_ui_routes"]
