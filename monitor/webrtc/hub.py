"""WebRTC in ``restrav serve``: WHIP publishers and WHEP pulls as streams like any other.

:class:`WhipHub` joins the WHIP endpoint's sessions (:mod:`monitor.webrtc.whip`) to the
stream manager (a published stream is listed, scored, measured and stored like
an RTSP one); :func:`attach_webrtc` wires WebRTC into the service: metrics, the
``whep`` and ``whip`` source kinds, the WHIP routes. Importing this module
registers both kinds with a placeholder opener, so stream specs naming them
validate before the service is assembled.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from ..config import StreamSpec, WebRTCSettings
from ..live.service import StreamManager
from ..media.sources.base import LiveSource, SourceContext, SourceError, register_source_kind
from ..metrics import WebRTCMetrics
from .tracks import TrackSource
from .whep import WHEP_SCHEMES, whep_opener
from .whip import WhipEndpoint


class WhipHub:
    """Joins WHIP sessions to the stream manager, so a published stream is a stream like
    any other (API, metrics, Redis).

    * Streams of kind ``whip`` (declared in ``serve.streams`` or through the
      API, URL ``whip://ID``) accept publishers: their runner's opener
      (:meth:`open`, registered for the kind) waits for a session and reads its
      track; when the publisher leaves, ``recv`` fails, the window ends and the
      runner waits for the next publisher (counted as a reconnect).
    * With ``whip_any_stream``, a POST to a free id creates a ``whip`` stream
      for the session's lifetime (not persisted) and the session's end removes
      it.
    * ``GET /whip/{id}/score`` shows the stream's state and latest score.
    """

    def __init__(
        self,
        manager: StreamManager,
        settings: WebRTCSettings,
        token: str | None,
        metrics: WebRTCMetrics | None = None,
    ) -> None:
        self.manager = manager
        self.settings = settings
        self.metrics = metrics
        self.endpoint = WhipEndpoint(
            settings,
            token=token,
            metrics=metrics,
            on_publish=self._publish,
            on_unpublish=self._unpublish,
            is_known=self._known,
            status_of=self._status,
        )
        self._sources: dict[str, TrackSource] = {}
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._ephemeral: set[str] = set()

    def register(self) -> None:
        """Register :meth:`open` as the opener of the ``whip`` source kind."""
        register_source_kind(WHIP_KIND, self.open, (WHIP_KIND,))

    def _declared(self, stream: str) -> bool:
        spec = self.manager.spec(stream)
        return spec is not None and (spec.kind == WHIP_KIND or spec.url.startswith("whip:"))

    def _known(self, stream: str) -> bool:
        if self._declared(stream):
            return True
        return self.settings.whip_any_stream and stream not in self.manager

    def _status(self, stream: str) -> dict[str, Any] | None:
        if not self._declared(stream):
            return None
        st = self.manager.get(stream)
        if st is None:
            return None
        return {
            "stream": st.id,
            "state": st.state,
            "windows_scored": st.windows_scored,
            "alert_active": st.alert_active,
            "last_score": st.last_score,
        }

    async def _publish(self, stream: str, source: TrackSource) -> None:
        if not self._declared(stream):
            spec = StreamSpec(id=stream, url=f"whip://{stream}", kind=WHIP_KIND)
            await self.manager.add(spec, persist=False)
            self._ephemeral.add(stream)
        self._sources[stream] = source
        for ev in self._waiters.get(stream, ()):
            ev.set()

    async def _unpublish(self, stream: str, reason: str) -> None:
        self._sources.pop(stream, None)
        if stream in self._ephemeral:
            self._ephemeral.discard(stream)
            await self.manager.remove(stream)

    async def open(self, spec: StreamSpec, ctx: SourceContext) -> LiveSource:
        """Opener of ``whip`` streams: wait for a publisher's session and return its track."""
        while True:
            src = self._sources.get(spec.id)
            if src is not None and not src.claimed and not src.ended:
                src.claimed = True
                return src
            ev = asyncio.Event()
            waiters = self._waiters.setdefault(spec.id, set())
            waiters.add(ev)
            try:
                await ev.wait()
            finally:
                waiters.discard(ev)
                if not waiters:
                    self._waiters.pop(spec.id, None)

    async def aclose(self) -> None:
        """End every WHIP session (before the stream manager stops)."""
        await self.endpoint.aclose()


WHIP_KIND = "whip"
"""Source kind of streams fed by WHIP publishers (URL ``whip://ID``)."""


async def _not_attached(spec: StreamSpec, ctx: SourceContext) -> LiveSource:
    """Opener of the WebRTC kinds until :func:`attach_webrtc` replaces it."""
    raise SourceError(
        "WebRTC is not attached to this service (restrav serve attaches it)",
        code="unsupported_source", permanent=True,
    )


# the kinds exist from import on, so stream specs naming them validate before the
# service is assembled (serve checks its configured streams before loading the model)
register_source_kind(WHIP_KIND, _not_attached, (WHIP_KIND,))
register_source_kind("whep", _not_attached, WHEP_SCHEMES)


def attach_webrtc(
    app: web.Application,
    manager: StreamManager,
    settings: WebRTCSettings,
    registry: CollectorRegistry,
    api_token: str | None,
) -> WhipHub:
    """Wire WebRTC into `restrav serve`: WebRTC metrics on ``registry``, the ``whep``
    and ``whip`` source kinds, and (``whip_enabled``) the WHIP routes and publisher
    page on ``app``. The WHIP token is ``webrtc.whip_token``, else the API token.
    Call :meth:`WhipHub.aclose` before stopping the manager."""
    metrics = WebRTCMetrics(registry)
    register_source_kind("whep", whep_opener(settings, metrics), WHEP_SCHEMES)
    token = settings.whip_token.get_secret_value() if settings.whip_token else api_token
    hub = WhipHub(manager, settings, token, metrics)
    hub.register()
    if settings.whip_enabled:
        hub.endpoint.add_routes(app)
    return hub


__all__ = ["WHIP_KIND", "WhipHub", "attach_webrtc"]
