"""A WHEP pull client: one stream pulled from a WHEP server as a live source.

Contract (the live source contract of :mod:`monitor.media.sources.base`):

* :class:`WhepSource` pulls one stream from a WHEP server (an HTTP POST of an
  SDP offer with receive-only transceivers, optional bearer token; DELETE of
  the session URL on close). The token goes only to the configured origin:
  redirects are not followed, and a ``Location`` on another scheme, host or port
  gets its DELETE without it. One instance is one session: the stream runner
  reconnects by opening a new one, with the same backoff and watchdog as RTSP.
  :func:`whep_opener` is the opener of the ``whep`` source kind
  (``whep+https://[:TOKEN@]host/path``).

Received video tracks are :class:`~monitor.webrtc.tracks.TrackSource` s (drained at
once into a bounded buffer, timed by the RTP clock). Audio is offered ``inactive``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

import aiohttp
from aiortc import (
    RTCPeerConnection,
    RTCSessionDescription,
)

from ..config import StreamSpec, WebRTCSettings
from ..media.sources.base import LiveSource, SourceContext, SourceError, SourceFrame, SourceOpener
from ..metrics import WebRTCMetrics
from ..redaction import redact_url
from ..types import SourceClosed
from .tracks import (
    MAX_ANSWER_BYTES,
    SDP_MIME,
    TrackSource,
    WebRTCError,
    ice_config,
    set_codec_preferences,
)

log = logging.getLogger(__name__)


def parse_sdp_kinds(sdp: str) -> list[str]:
    """The media kinds of an SDP's m-lines, in order (``video``, ``audio``, ...)."""
    kinds: list[str] = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            kinds.append(line[2:].split(" ", 1)[0])
    return kinds


class WhepSource:
    """Pulls one stream from a WHEP server: a :class:`~monitor.media.sources.base.LiveSource`.

    :meth:`connect` POSTs an SDP offer (one receive-only video transceiver,
    audio offered ``inactive``) with ``Authorization: Bearer <token>`` when a
    token is given, expects ``201`` with the answer and a ``Location``, and
    waits for the first frame. It raises :class:`WebRTCError` when the server
    refuses (401/403: ``permanent``), the answer is bad, or no frame arrives
    within ``connect_timeout_s``. :meth:`recv` raises :class:`WebRTCError` (not
    permanent) when the peer connection fails or closes: the stream runner
    reconnects with its backoff, and its watchdog covers a silent server.
    :meth:`aclose` DELETEs the session (best effort) and closes the peer.
    One instance is one session.
    """

    def __init__(
        self,
        url: str,
        stream: str,
        *,
        token: str | None = None,
        http_timeout_s: float = 10.0,
        connect_timeout_s: float = 15.0,
        capacity: int = 8,
        max_pixels: int = 3840 * 2160,
        video_codecs: list[str] | None = None,
        metrics: WebRTCMetrics | None = None,
    ) -> None:
        self.url = url
        self.stream = stream
        self.description = f"whep:{redact_url(url)}"
        self._token = token
        self.http_timeout_s = http_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._capacity = capacity
        self._max_pixels = max_pixels
        self._codecs = list(video_codecs or [])
        self.metrics = metrics
        self.pc: RTCPeerConnection | None = None
        self.track_source: TrackSource | None = None
        self.session_url: str | None = None
        self._closed = False
        self._failed = asyncio.Event()

    def _headers(self, content_type: str | None = None, to: str | None = None) -> dict[str, str]:
        """Request headers; the bearer token only for the configured origin (``to``:
        the URL the request goes to, default the configured one)."""
        h: dict[str, str] = {}
        if content_type:
            h["Content-Type"] = content_type
        if self._token and (to is None or same_origin(to, self.url)):
            h["Authorization"] = f"Bearer {self._token}"
        return h

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.whep_connects.labels(self.stream, outcome).inc()

    async def connect(self) -> None:
        """Negotiate the session and wait for the first frame (see the class docstring)."""
        if self.pc is not None:
            raise RuntimeError("WhepSource.connect() called twice; build a new source")
        t0 = time.monotonic()
        pc = RTCPeerConnection(ice_config())
        self.pc = pc
        if self.metrics is not None:
            self.metrics.sessions.labels("whep").inc()
        video = pc.addTransceiver("video", direction="recvonly")
        set_codec_preferences(video, self._codecs)
        pc.addTransceiver("audio", direction="inactive")

        @pc.on("connectionstatechange")
        def _on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                self._failed.set()

        await pc.setLocalDescription(await pc.createOffer())
        offer = pc.localDescription.sdp
        where = self.description
        try:
            timeout = aiohttp.ClientTimeout(total=self.http_timeout_s)
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.post(
                    self.url, data=offer, headers=self._headers(SDP_MIME), allow_redirects=False
                ) as resp,
            ):
                if 300 <= resp.status < 400:
                    # following it would send the offer (and the token) elsewhere
                    self._count("http_error")
                    raise WebRTCError(
                        f"{where}: the server redirects ({resp.status}); redirects are not "
                        "followed: configure the URL it points to",
                        code=f"whep_http_{resp.status}",
                    )
                if resp.status != 201:
                    body = (await resp.content.read(512)).decode("utf-8", "replace")
                    self._count("http_error")
                    raise WebRTCError(
                        f"{where}: the server answered {resp.status} (expected 201): "
                        f"{body.strip()[:200]}",
                        code=f"whep_http_{resp.status}",
                        permanent=resp.status in (401, 403),
                    )
                location = resp.headers.get("Location")
                answer_bytes = await resp.content.read(MAX_ANSWER_BYTES + 1)
        except TimeoutError as exc:
            self._count("timeout")
            raise WebRTCError(f"{where}: no answer within {self.http_timeout_s:g} s",
                              code="whep_timeout") from exc
        except aiohttp.ClientError as exc:
            self._count("http_error")
            raise WebRTCError(f"{where}: request failed: {exc}", code="whep_unreachable") from exc
        if len(answer_bytes) > MAX_ANSWER_BYTES:
            self._count("bad_answer")
            raise WebRTCError(f"{where}: the answer exceeds {MAX_ANSWER_BYTES} bytes",
                              code="whep_bad_answer")
        if location:
            self.session_url = urljoin(self.url, location)
        try:
            answer = answer_bytes.decode("utf-8")
            if "video" not in parse_sdp_kinds(answer):
                raise ValueError("the answer has no video section")
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        except (ValueError, UnicodeDecodeError, AssertionError) as exc:
            # aiortc reports malformed SDP with ValueError and bare asserts
            self._count("bad_answer")
            raise WebRTCError(f"{where}: bad SDP answer: {exc or 'malformed'}",
                              code="whep_bad_answer") from exc
        # the receiver's track exists once the answer is applied
        self.track_source = TrackSource(
            video.receiver.track,
            self.stream,
            description=where,
            capacity=self._capacity,
            max_pixels=self._max_pixels,
            metrics=self.metrics,
            end_message="the WHEP session ended",
        )
        self.track_source.start()
        first = asyncio.ensure_future(self.track_source.first_frame.wait())
        failed = asyncio.ensure_future(self._failed.wait())
        try:
            done, _ = await asyncio.wait(
                {first, failed}, timeout=self.connect_timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            first.cancel()
            failed.cancel()
        if not self.track_source.first_frame.is_set():
            self._count("ice_failed" if failed in done else "timeout")
            raise WebRTCError(f"{where}: no video within {self.connect_timeout_s:g} s",
                              code="whep_no_video")
        self._count("ok")
        if self.metrics is not None:
            self.metrics.sessions_started.labels("whep").inc()
            self.metrics.setup_seconds.labels("whep").observe(time.monotonic() - t0)
        log.info("%s: receiving (stream %s)", where, self.stream)

    async def recv(self) -> SourceFrame:
        """The next frame; :class:`WebRTCError` when the peer connection ends."""
        if self.track_source is None:
            await self.connect()
        src = self.track_source
        assert src is not None and src.buffer is not None
        if self._failed.is_set() and len(src.buffer) == 0:
            raise WebRTCError(f"{self.description}: the peer connection ended",
                              code="webrtc_lost")
        get = asyncio.ensure_future(src.recv())
        failed = asyncio.ensure_future(self._failed.wait())
        try:
            await asyncio.wait({get, failed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            failed.cancel()
            if not get.done():
                get.cancel()
                with contextlib.suppress(asyncio.CancelledError, SourceError, SourceClosed):
                    await get
        if get.done() and not get.cancelled():
            return get.result()
        raise WebRTCError(f"{self.description}: the peer connection ended", code="webrtc_lost")

    async def aclose(self) -> None:
        """DELETE the WHEP session (best effort) and close the peer; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.track_source is not None:
            await self.track_source.aclose()
        if self.session_url is not None:
            if not same_origin(self.session_url, self.url):
                log.info("%s: the session Location is on another origin: DELETE without "
                         "credentials", self.description)
            try:
                timeout = aiohttp.ClientTimeout(total=min(self.http_timeout_s, 3.0))
                async with (
                    aiohttp.ClientSession(timeout=timeout) as http,
                    http.delete(
                        self.session_url, headers=self._headers(to=self.session_url),
                        allow_redirects=False,
                    ) as resp,
                ):
                    await resp.read()
            except (TimeoutError, aiohttp.ClientError) as exc:
                log.info("%s: DELETE of the session failed: %s", self.description, exc)
        if self.pc is not None:
            await self.pc.close()
            if self.metrics is not None:
                self.metrics.sessions.labels("whep").dec()
                self.metrics.sessions_ended.labels("whep", "closed").inc()


def same_origin(a: str, b: str) -> bool:
    """Whether two http(s) URLs share scheme, host and port (default ports filled in)."""

    def origin(url: str) -> tuple[str, str, int | None]:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        try:
            port = parts.port or {"http": 80, "https": 443}.get(scheme)
        except ValueError:
            port = -1
        return scheme, (parts.hostname or "").lower(), port

    return origin(a) == origin(b)


WHEP_SCHEMES = ("whep+http", "whep+https")
"""URL schemes of WHEP streams: ``whep+https://[:TOKEN@]server/whep/NAME``."""


def whep_target(url: str) -> tuple[str, str | None]:
    """Split a stream URL into the WHEP endpoint (http/https) and the bearer token.

    The token travels as the URL's password (``whep+https://:TOKEN@host/...``,
    or from ``credentials_ref``: its password), or as the user name when there
    is no password; it is removed from the URL that is requested or printed.
    Raises a permanent :class:`WebRTCError` for anything but whep+http(s).
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme.startswith("whep+"):
        scheme = scheme[len("whep+"):]
    if scheme not in ("http", "https") or not parts.hostname:
        raise WebRTCError(
            f"not a WHEP URL: {redact_url(url)} (use whep+https://host/path)",
            code="unsupported_source",
            permanent=True,
        )
    token = unquote(parts.password) if parts.password else None
    if token is None and parts.username:
        token = unquote(parts.username)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((scheme, host, parts.path, parts.query, "")), token


def whep_opener(settings: WebRTCSettings, metrics: WebRTCMetrics | None) -> SourceOpener:
    """The opener of the ``whep`` source kind (register it with
    :func:`~monitor.media.sources.base.register_source_kind`): connects a
    :class:`WhepSource` with the stream runner's timeouts and buffer size."""

    async def open_whep(spec: StreamSpec, ctx: SourceContext) -> LiveSource:
        url, token = whep_target(ctx.url)
        src = WhepSource(
            url,
            spec.id,
            token=token,
            http_timeout_s=settings.whep_timeout_s,
            connect_timeout_s=ctx.settings.open_timeout_s,
            capacity=ctx.settings.buffer_frames,
            max_pixels=min(ctx.max_pixels, settings.max_pixels),
            video_codecs=list(settings.video_codecs),
            metrics=metrics,
        )
        try:
            await src.connect()
        except BaseException:
            await src.aclose()
            raise
        return src

    return open_whep
