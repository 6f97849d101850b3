"""WebRTC sources: aiortc tracks drained into our bounded buffer, and a WHEP pull client.

Contract (the live source contract of :mod:`monitor.sources.base`):

* :class:`TrackSource` wraps one aiortc video track (a remote
  ``MediaStreamTrack``) as a live source. A drain task pulls every decoded
  frame out of aiortc *at once* (aiortc's own queues are unbounded, so a slow
  consumer would make them grow and lag behind real time) into a
  :class:`~monitor.sources.base.FrameBuffer` that keeps the latest
  ``capacity`` frames; drops are counted and reach the stream runner as
  ``dropped_before``, which ends the window. Frames stay in YUV until the
  engine converts the few the 11.5 Hz grid samples.
* Timestamps come from the RTP clock: ``pts * time_base`` of the decoded frame
  (aiortc rebases the 90 kHz RTP timestamp to 0 and unwraps it), never from
  arrival times. The stream's :class:`~monitor.sampler.LiveSampler` ends the
  window on a jump beyond ``gap_tolerance_s`` (packet loss, a frozen
  publisher) or a clock going back, like any gap.
* :class:`WhepSource` pulls one stream from a WHEP server (an HTTP POST of an
  SDP offer with receive-only transceivers, optional bearer token; DELETE of
  the session URL on close). The token goes only to the configured origin:
  redirects are not followed, and a ``Location`` on another scheme, host or port
  gets its DELETE without it. One instance is one session: the stream runner
  reconnects by opening a new one, with the same backoff and watchdog as RTSP.
  :func:`whep_opener` is the opener of the ``whep`` source kind
  (``whep+https://[:TOKEN@]host/path``).

Audio is accepted and ignored: audio transceivers are answered or offered
``inactive``, so no audio is sent, decoded or queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

import aiohttp
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from ..colour import frame_planes
from ..config import StreamSpec, WebRTCSettings
from ..metrics import WebRTCMetrics
from ..redaction import redact_url
from ..types import RGBArray, SourceClosed
from .base import (
    DropPolicy,
    FrameBuffer,
    LiveSource,
    SourceContext,
    SourceError,
    SourceFrame,
    SourceOpener,
)

log = logging.getLogger(__name__)

SDP_MIME = "application/sdp"
MAX_ANSWER_BYTES = 256 * 1024
"""Bound on a WHEP server's SDP answer."""


class WebRTCError(SourceError):
    """A WebRTC peer misbehaved or went away: a refused WHEP request, a bad SDP
    answer, ICE failure, a publisher that left. Retried unless ``permanent``."""

    def __init__(self, message: str, code: str = "webrtc", permanent: bool = False,
                 expected: bool = False) -> None:
        super().__init__(message, code=code, permanent=permanent, expected=expected)


def frame_to_rgb(frame: Any) -> RGBArray:
    """An aiortc (PyAV) video frame as RGB ``uint8`` ``(H, W, 3)``."""
    rgb: RGBArray = frame.to_ndarray(format="rgb24")
    return rgb


def rtp_seconds(frame: Any) -> float:
    """A decoded frame's time on the RTP clock: ``pts * time_base`` in seconds.

    aiortc rebases the 90 kHz RTP timestamp of each receiver to 0 and unwraps
    it, so this is seconds since the first frame of the connection.
    """
    if frame.pts is None or frame.time_base is None:
        raise WebRTCError("decoded frame without a timestamp", code="no_timestamp")
    return float(frame.pts * frame.time_base)


class TrackSource:
    """A :class:`~monitor.sources.base.LiveSource` over one aiortc video track.

    :meth:`start` launches the drain task (call it once the track exists, i.e.
    after the remote description is applied): every decoded frame is taken from
    aiortc at once and put into a :class:`~monitor.sources.base.FrameBuffer` of
    ``capacity`` frames that keeps the latest (drops counted in
    ``dropped_before`` of the next frame). :meth:`recv` returns
    :class:`~monitor.sources.base.SourceFrame` objects with RTP-clock times;
    the RGB conversion is left to whoever samples the frame.

    When the track ends (the peer closed, the session was deleted), ``recv``
    raises ``end_error`` once the buffered frames are consumed: by default a
    retryable :class:`WebRTCError` (the stream runner reconnects), or
    :class:`SourceClosed` when given ``None``.
    """

    def __init__(
        self,
        track: MediaStreamTrack,
        stream: str,
        *,
        description: str = "",
        capacity: int = 8,
        max_pixels: int = 3840 * 2160,
        metrics: WebRTCMetrics | None = None,
        end_message: str = "the WebRTC track ended",
    ) -> None:
        self.track = track
        self.stream = stream
        self.description = description or f"webrtc:{stream}"
        self.capacity = capacity
        self.max_pixels = max_pixels
        self.metrics = metrics
        self.end_message = end_message
        self.buffer: FrameBuffer | None = None
        self._task: asyncio.Task[None] | None = None
        self._index = 0
        self._closed = False
        self.claimed = False
        self.frames_received = 0
        self.frames_too_large = 0
        self.started_monotonic = time.monotonic()
        self.first_frame_monotonic: float | None = None
        self.last_frame_monotonic: float | None = None
        self.first_frame = asyncio.Event()
        self.ended_event = asyncio.Event()

    def start(self) -> None:
        """Start draining the track (idempotent)."""
        if self._task is None and not self._closed:
            loop = asyncio.get_running_loop()
            self.buffer = FrameBuffer(loop, self.capacity, DropPolicy.KEEP_LATEST)
            self._task = loop.create_task(self._drain(), name=f"webrtc-drain-{self.stream}")

    @property
    def ended(self) -> bool:
        """True once the track has ended or the source was closed."""
        return self.ended_event.is_set()

    @property
    def dropped(self) -> int:
        """Frames the buffer dropped to stay bounded."""
        return self.buffer.dropped if self.buffer is not None else 0

    async def _drain(self) -> None:
        assert self.buffer is not None
        try:
            while True:
                try:
                    frame: Any = await self.track.recv()
                except MediaStreamError:
                    break
                now = time.monotonic()
                self.frames_received += 1
                if self.first_frame_monotonic is None:
                    self.first_frame_monotonic = now
                    self.first_frame.set()
                self.last_frame_monotonic = now
                m = self.metrics
                if m is not None:
                    m.frames_received.labels(self.stream).inc()
                if int(frame.width) * int(frame.height) > self.max_pixels:
                    self.frames_too_large += 1
                    if m is not None:
                        m.frames_dropped.labels(self.stream, "too_large").inc()
                    continue
                before = self.buffer.dropped
                self.buffer.put(
                    SourceFrame(
                        pts_s=rtp_seconds(frame),
                        arrival_s=now,
                        index=self._index,
                        image=frame,
                        to_rgb=frame_to_rgb,
                        to_planes=frame_planes,
                    )
                )
                self._index += 1
                if m is not None and self.buffer.dropped > before:
                    m.frames_dropped.labels(self.stream, "buffer_full").inc()
        finally:
            self.ended_event.set()
            self.buffer.close(WebRTCError(f"{self.description}: {self.end_message}",
                                          code="webrtc_ended"))

    async def recv(self) -> SourceFrame:
        """The next frame; the end error once the track has ended and the buffer is empty."""
        if self.buffer is None:
            raise RuntimeError("TrackSource.recv() before start()")
        return await self.buffer.get()

    async def aclose(self, publisher_ended: bool = False) -> None:
        """Stop draining and release queued frames; idempotent. Does not close the peer.
        ``publisher_ended``: the publisher ended its session itself (WHIP DELETE), a
        normal end that the reader sees as an ``expected`` error (code ``publisher_left``)."""
        if self._closed:
            return
        self._closed = True
        self.ended_event.set()
        if self.buffer is not None:
            self.buffer.close(
                WebRTCError(f"{self.description}: the publisher ended its session",
                            code="publisher_left", expected=True)
                if publisher_ended
                else WebRTCError(f"{self.description}: closed", code="webrtc_closed")
            )
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.track.stop()


def ice_config() -> RTCConfiguration:
    """aiortc configuration with no ICE servers (aiortc's default names a public STUN)."""
    return RTCConfiguration(iceServers=[])


def set_codec_preferences(transceiver: RTCRtpTransceiver, names: list[str]) -> None:
    """Prefer these video codecs (``VP8``, ``H264``) in this order, keeping RTX."""
    if not names:
        return
    caps = RTCRtpReceiver.getCapabilities("video")
    if caps is None:
        return
    wanted = [n.lower() for n in names]
    codecs = [c for n in wanted for c in caps.codecs if c.mimeType.lower() == f"video/{n}"]
    codecs += [c for c in caps.codecs if c.mimeType.lower() == "video/rtx"]
    if codecs:
        transceiver.setCodecPreferences(codecs)


def parse_sdp_kinds(sdp: str) -> list[str]:
    """The media kinds of an SDP's m-lines, in order (``video``, ``audio``, ...)."""
    kinds: list[str] = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            kinds.append(line[2:].split(" ", 1)[0])
    return kinds


class WhepSource:
    """Pulls one stream from a WHEP server: a :class:`~monitor.sources.base.LiveSource`.

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
    :func:`~monitor.sources.base.register_source_kind`): connects a
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
