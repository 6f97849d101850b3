"""WHIP sessions: their peer connections, limits, watchdogs and endings.

:class:`WhipSessions` holds every live session of a WHIP endpoint: at most
``max_sessions`` (pending ones included) and one per stream. :meth:`WhipSessions.create`
answers a checked offer (receive-only video, audio ``inactive``, the DTLS server
role for ``actpass`` offers) and hands the video track, drained by a
:class:`~monitor.webrtc.tracks.TrackSource`, to ``on_publish``. A watchdog ends a
session on ICE/DTLS failure, on no video within ``connect_timeout_s``, or on a
publisher silent for ``idle_timeout_s``; every end awaits ``on_unpublish`` and is
logged in one line with its reason (a failure says the ICE and DTLS states).
Refusals are :class:`WhipRefused` (HTTP status, reason label, message), which the
HTTP layer (:mod:`monitor.webrtc.whip`) turns into responses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from aiortc import RTCPeerConnection, RTCRtpTransceiver, RTCSessionDescription

from ..config import WebRTCSettings
from ..errors import RestravError
from ..metrics import WebRTCMetrics
from .sdp import answer_as_dtls_server, with_bitrate_hints
from .tracks import TrackSource, ice_config, set_codec_preferences

log = logging.getLogger("monitor.whip")

PublishHook = Callable[[str, TrackSource], Awaitable[None]]
UnpublishHook = Callable[[str, str], Awaitable[None]]


class WhipRefused(Exception):
    """A refused WHIP request: HTTP status, reason label and a message for the client."""

    def __init__(
        self, status: int, reason: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.headers = headers or {}


@dataclass
class WhipSession:
    """One publisher: its peer connection, drained track and watchdog."""

    id: str
    stream: str
    pc: RTCPeerConnection
    source: TrackSource
    etag: str
    created_monotonic: float = field(default_factory=time.monotonic)
    watchdog: asyncio.Task[None] | None = None
    ending: bool = False
    setup_observed: bool = False

    @property
    def location(self) -> str:
        """The session resource path given in ``Location``."""
        return f"/whip/{self.stream}/{self.id}"


def transport_states(pc: RTCPeerConnection) -> str:
    """Why a peer connection failed, in words: its ICE and DTLS states and what they
    mean (for the one log line of a failed session)."""
    ice = pc.iceConnectionState
    dtls = sorted({tr.receiver.transport.state for tr in pc.getTransceivers()}) or ["none"]
    text = f"ICE {ice}, DTLS {'/'.join(dtls)}"
    if "failed" in dtls and ice in ("connected", "completed"):
        text += (" (the DTLS handshake failed: no shared cipher suite or a certificate "
                 "that does not match the offer's fingerprint)")
    elif ice == "failed":
        text += " (no ICE candidate pair answered: a firewall, or no reachable address)"
    return text


async def no_publish(stream: str, source: TrackSource) -> None:
    """Default hook: nobody consumes the frames (the buffer stays bounded)."""


async def no_unpublish(stream: str, reason: str) -> None:
    """Default hook."""


class WhipSessions:
    """The live sessions of one endpoint, their limits and lifecycle (module docstring)."""

    def __init__(
        self,
        settings: WebRTCSettings,
        metrics: WebRTCMetrics | None = None,
        on_publish: PublishHook = no_publish,
        on_unpublish: UnpublishHook = no_unpublish,
        watchdog_interval_s: float = 0.25,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.on_publish = on_publish
        self.on_unpublish = on_unpublish
        self.watchdog_interval_s = watchdog_interval_s
        self.sessions: dict[str, WhipSession] = {}
        self._by_stream: dict[str, str] = {}
        self._pending = 0
        self.closed = False

    def reserve(self, stream: str) -> None:
        """Refuse a new session over the limits (503 full or shutting down, 409 a stream
        with a publisher); otherwise hold its place until :meth:`create` returns."""
        if len(self.sessions) + self._pending >= self.settings.max_sessions:
            raise WhipRefused(
                503,
                "too_many_sessions",
                f"the service holds its maximum of {self.settings.max_sessions} WebRTC "
                "sessions; retry later",
                {"Retry-After": "5"},
            )
        if stream in self._by_stream:
            raise WhipRefused(
                409,
                "conflict",
                f"stream {stream!r} already has a publisher; DELETE its session first",
            )
        if self.closed:
            raise WhipRefused(503, "shutdown", "the service is shutting down")

    async def open(self, stream: str, offer: str) -> tuple[WhipSession, str]:
        """Check the limits, then answer ``offer`` (already parsed and checked) and start
        the session. Returns the session and the SDP answer. Raises :class:`WhipRefused`."""
        self.reserve(stream)
        self._pending += 1
        self._by_stream[stream] = ""
        try:
            return await self._create(stream, offer)
        finally:
            self._pending -= 1
            if self._by_stream.get(stream) == "":
                del self._by_stream[stream]

    async def _answer(self, pc: RTCPeerConnection, offer: str) -> RTCRtpTransceiver:
        """Negotiate on ``pc``: receive-only video (returned), everything else ``inactive``."""
        s = self.settings
        if s.video_codecs:
            # a receive-only transceiver made before setRemoteDescription carries the
            # codec preference; afterwards it would have no effect
            set_codec_preferences(
                pc.addTransceiver("video", direction="recvonly"), list(s.video_codecs)
            )
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        # aiortc reports offers it cannot use with ValueError, KeyError, IndexError and
        # bare asserts (parse_offer caught the malformed ones): bad input from the publisher
        except (ValueError, KeyError, IndexError, TypeError, AssertionError) as exc:
            detail = str(exc) or "malformed SDP"
            raise WhipRefused(400, "bad_sdp", f"the SDP offer cannot be used: {detail}") from exc
        video = None
        for tr in pc.getTransceivers():
            if tr.kind == "video" and video is None and tr.direction != "inactive":
                video = tr
                tr.direction = "recvonly"
            else:
                if tr.kind == "audio" and self.metrics is not None:
                    self.metrics.audio_tracks_ignored.labels("whip").inc()
                tr.direction = "inactive"
        if video is None:
            raise WhipRefused(400, "bad_sdp", "the offer has no video to receive")
        answer_as_dtls_server(pc)
        try:
            await pc.setLocalDescription(await pc.createAnswer())
        except (ValueError, KeyError, IndexError, AssertionError) as exc:
            raise WhipRefused(
                400, "bad_sdp", f"no answer can be made to this offer: {exc or 'no codec'}"
            ) from exc
        return video

    async def _create(self, stream: str, offer: str) -> tuple[WhipSession, str]:
        s = self.settings
        pc = RTCPeerConnection(ice_config())
        if self.metrics is not None:
            self.metrics.sessions.labels("whip").inc()
        try:
            video = await self._answer(pc, offer)
        except BaseException:
            await pc.close()
            if self.metrics is not None:
                self.metrics.sessions.labels("whip").dec()
            raise
        session_id = secrets.token_urlsafe(16)
        source = TrackSource(
            video.receiver.track,
            stream,
            description=f"whip:{stream}",
            capacity=s.buffer_frames,
            max_pixels=s.max_pixels,
            metrics=self.metrics,
            end_message="the publisher left",
        )
        session = WhipSession(
            id=session_id, stream=stream, pc=pc, source=source, etag=secrets.token_hex(8)
        )
        self.sessions[session_id] = session
        self._by_stream[stream] = session_id

        source.start()
        session.watchdog = asyncio.get_running_loop().create_task(
            self._watch(session), name=f"whip-watchdog-{stream}"
        )
        if self.metrics is not None:
            self.metrics.sessions_started.labels("whip").inc()
        try:
            await self.on_publish(stream, source)
        except RestravError as exc:
            await self.end(session_id, "refused")
            raise WhipRefused(503, exc.code, f"the stream cannot start: {exc.message}") from exc
        sdp = with_bitrate_hints(pc.localDescription.sdp, s.start_bitrate_kbps)
        log.info("WHIP %s: session %s… started", stream, session_id[:6])
        return session, sdp

    async def _watch(self, session: WhipSession) -> None:
        """End the session on ICE/DTLS failure, no video in time, or a silent publisher."""
        s = self.settings
        src = session.source
        while not session.ending:
            await asyncio.sleep(self.watchdog_interval_s)
            now = time.monotonic()
            reason: str | None = None
            if session.pc.connectionState in ("failed", "closed"):
                reason = "failed"
            elif src.ended:
                reason = "closed"
            elif src.last_frame_monotonic is None:
                if now - session.created_monotonic > s.connect_timeout_s:
                    reason = "connect_timeout"
            elif now - src.last_frame_monotonic > s.idle_timeout_s:
                reason = "idle"
            if src.first_frame_monotonic is not None and not session.setup_observed:
                session.setup_observed = True
                if self.metrics is not None:
                    self.metrics.setup_seconds.labels("whip").observe(
                        src.first_frame_monotonic - session.created_monotonic
                    )
            if reason is not None:
                # the session ends itself: do not cancel this very task from end()
                session.watchdog = None
                await self.end(session.id, reason)
                return

    async def end(self, session_id: str, reason: str) -> bool:
        """End a session (idempotent); False when there is no such session."""
        session = self.sessions.get(session_id)
        if session is None or session.ending:
            return False
        session.ending = True
        # what the transports say, read before closing them resets it
        why = transport_states(session.pc)
        if session.watchdog is not None:
            session.watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await session.watchdog
        try:
            await self.on_unpublish(session.stream, reason)
        finally:
            await session.source.aclose(publisher_ended=reason == "deleted")
            await session.pc.close()
            self.sessions.pop(session_id, None)
            if self._by_stream.get(session.stream) == session_id:
                del self._by_stream[session.stream]
            if self.metrics is not None:
                self.metrics.sessions.labels("whip").dec()
                self.metrics.sessions_ended.labels("whip", reason).inc()
            if reason in ("failed", "connect_timeout", "closed") and not session.setup_observed:
                log.warning("WHIP %s: session %s… ended (%s) before any video: %s",
                            session.stream, session_id[:6], reason, why)
            else:
                log.info("WHIP %s: session %s… ended (%s; %s)",
                         session.stream, session_id[:6], reason, why)
        return True

    def session_for(self, stream: str) -> WhipSession | None:
        """The live session publishing ``stream``, if any."""
        sid = self._by_stream.get(stream)
        return self.sessions.get(sid) if sid else None

    async def aclose(self, ids: Iterable[str] | None = None) -> None:
        """End every session (shutdown); later sessions are refused (503)."""
        self.closed = True
        for sid in list(ids if ids is not None else self.sessions):
            await self.end(sid, "shutdown")
