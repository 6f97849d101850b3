"""WebRTC frame sources: aiortc tracks drained into our bounded buffer, and a WHEP pull client.

Contract:

* :class:`TrackSource` wraps one aiortc video track (a remote
  ``MediaStreamTrack``) as a :class:`~monitor.types.FrameSource`. A drain task
  pulls every decoded frame out of aiortc *at once* (aiortc's own queues are
  unbounded, so a slow consumer would make them grow and lag) into a
  :class:`FrameBuffer` of ``capacity`` frames with a named :class:`DropPolicy`;
  every drop is counted. Frames stay in YUV until :meth:`TrackSource.recv`
  converts the one asked for to RGB.
* Timestamps come from the RTP clock: ``pts * time_base`` of the decoded frame
  (aiortc rebases the 90 kHz RTP timestamp to 0 and unwraps it). :class:`RtpClock`
  turns them into seconds on a monotonic clock and classifies discontinuities:
  a jump larger than ``max_gap_s`` (packet loss, a frozen publisher) or a clock
  going backwards marks the next frame with ``gap_before``; so does a frame the
  buffer dropped. The engine ends the window there (SPEC section 8).
* :class:`WhepSource` pulls one stream from a WHEP server (an HTTP POST of an
  SDP offer with receive-only transceivers, optional bearer token; DELETE of the
  session URL on close). One instance is one session: the stream runner
  reconnects by building a new one, with its backoff and watchdog.

Audio is accepted and ignored: audio transceivers are answered or offered
``inactive``, so no audio is sent, decoded or queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urljoin

import aiohttp
from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from ..errors import InputError, InputTooLarge
from ..metrics import WebRTCMetrics
from ..redaction import redact_url
from ..types import Frame, SourceClosed

log = logging.getLogger(__name__)

SDP_MIME = "application/sdp"
MAX_ANSWER_BYTES = 256 * 1024
"""Bound on a WHEP server's SDP answer."""


class WebRTCError(InputError):
    """A WebRTC peer misbehaved: bad SDP, a refused WHEP request, ICE failure."""

    code = "webrtc"


class DropPolicy(StrEnum):
    """What a full :class:`FrameBuffer` does with one more frame."""

    DROP_OLDEST = "drop_oldest"
    """Live default: discard the oldest queued frame, keep the latest."""
    DROP_NEWEST = "drop_newest"
    """Discard the arriving frame, keep what is queued."""


class GapReason(StrEnum):
    """Why a frame starts a new window."""

    LOSS = "loss"
    """The RTP clock jumped by more than the gap bound (lost frames, a freeze)."""
    BACKWARDS = "backwards"
    """The RTP clock went back (a new SSRC, a publisher restart)."""
    DROPPED = "dropped"
    """Our buffer dropped frames just before this one."""


@dataclass(slots=True)
class _Item:
    frame: Any  # av.VideoFrame; kept in YUV until asked for
    pts_s: float
    gap: GapReason | None


class FrameBuffer:
    """A bounded FIFO of decoded frames between a drain task and one consumer.

    ``put`` never blocks: when full, :attr:`policy` decides which frame goes, and
    the next frame handed out is marked with a ``DROPPED`` gap. ``get`` waits for
    a frame and raises :class:`SourceClosed` once the buffer is closed and empty.
    """

    def __init__(self, capacity: int, policy: DropPolicy = DropPolicy.DROP_OLDEST) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.policy = policy
        self._items: deque[_Item] = deque()
        self._ready = asyncio.Event()
        self._closed = False
        self._gap_pending: GapReason | None = None
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def put(self, item: _Item) -> bool:
        """Queue ``item``; return False when a frame had to be dropped to stay bounded."""
        if self._closed:
            return True
        ok = True
        if len(self._items) >= self.capacity:
            ok = False
            self.dropped += 1
            if self.policy is DropPolicy.DROP_NEWEST:
                self._gap_pending = GapReason.DROPPED
                return False
            self._items.popleft()
            # the frame after the dropped one starts a new window
            head = self._items[0] if self._items else item
            head.gap = head.gap or GapReason.DROPPED
        if self._gap_pending is not None:
            item.gap = item.gap or self._gap_pending
            self._gap_pending = None
        self._items.append(item)
        self._ready.set()
        return ok

    async def get(self) -> _Item:
        """Wait for the next frame; :class:`SourceClosed` when closed and drained."""
        while not self._items:
            if self._closed:
                raise SourceClosed("track ended")
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def close(self) -> None:
        """No more frames will come; waiting consumers wake up."""
        self._closed = True
        self._ready.set()

    def clear(self) -> None:
        """Drop every queued frame (on close: release the decoded pictures)."""
        self._items.clear()


class RtpClock:
    """RTP frame timestamps to monotonic seconds, with discontinuity detection.

    ``update(pts, time_base)`` returns ``(seconds, gap)``: seconds since the first
    frame of this clock, never decreasing; ``gap`` is a :class:`GapReason` when
    the step from the previous frame exceeds ``max_gap_s`` or goes backwards
    (the time line is then continued one nominal step after the last frame, so
    the sampler never sees time go back).
    """

    NOMINAL_STEP_S = 1.0 / 30.0

    def __init__(self, max_gap_s: float) -> None:
        if not max_gap_s > 0:
            raise ValueError("max_gap_s must be > 0")
        self.max_gap_s = max_gap_s
        self._last_raw: float | None = None
        self._offset = 0.0
        self._last_s = 0.0

    def update(self, pts: int | None, time_base: Any) -> tuple[float, GapReason | None]:
        """Map one frame's ``pts * time_base`` (None: no timestamp) to seconds."""
        raw = float(pts * time_base) if pts is not None and time_base is not None else math.nan
        if not math.isfinite(raw):
            raise WebRTCError("decoded frame without a timestamp")
        if self._last_raw is None:
            self._offset = -raw
            self._last_raw = raw
            self._last_s = 0.0
            return 0.0, None
        step = raw - self._last_raw
        gap: GapReason | None = None
        if step < 0:
            gap = GapReason.BACKWARDS
        elif step > self.max_gap_s:
            gap = GapReason.LOSS
        if gap is GapReason.BACKWARDS:
            self._offset = self._last_s + self.NOMINAL_STEP_S - raw
        self._last_raw = raw
        self._last_s = raw + self._offset
        return self._last_s, gap


Counter_ = Callable[[str], None]


class TrackSource:
    """A :class:`~monitor.types.FrameSource` over one aiortc video track.

    :meth:`start` launches the drain task (call it once the track exists, i.e.
    right after ``setRemoteDescription``). :meth:`recv` returns frames in
    arrival order with RTP-clock times; a frame that follows a discontinuity has
    its reason in :attr:`last_gap` (read it right after ``recv``) and is counted.
    ``recv`` raises :class:`SourceClosed` after the track ends or :meth:`aclose`.
    """

    def __init__(
        self,
        track: MediaStreamTrack,
        stream: str,
        *,
        capacity: int = 8,
        policy: DropPolicy | str = DropPolicy.DROP_OLDEST,
        max_gap_s: float = 0.25,
        max_pixels: int = 3840 * 2160,
        metrics: WebRTCMetrics | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.track = track
        self.stream = stream
        self.buffer = FrameBuffer(capacity, DropPolicy(policy))
        self.clock = RtpClock(max_gap_s)
        self.max_pixels = max_pixels
        self.metrics = metrics
        self._on_close = on_close
        self._task: asyncio.Task[None] | None = None
        self._index = 0
        self._closed = False
        self.frames_received = 0
        self.frames_too_large = 0
        self.gaps: dict[str, int] = {}
        self.last_gap: GapReason | None = None
        self.started_monotonic = time.monotonic()
        self.first_frame_monotonic: float | None = None
        self.last_frame_monotonic: float | None = None
        self.first_frame = asyncio.Event()

    def start(self) -> None:
        """Start draining the track (idempotent)."""
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(
                self._drain(), name=f"webrtc-drain-{self.stream}"
            )

    @property
    def ended(self) -> bool:
        """True once the track has ended or the source was closed."""
        return self.buffer.closed

    def _count_gap(self, reason: GapReason) -> None:
        self.gaps[reason.value] = self.gaps.get(reason.value, 0) + 1
        if self.metrics is not None:
            self.metrics.gaps.labels(self.stream, reason.value).inc()

    async def _drain(self) -> None:
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
                if self.metrics is not None:
                    self.metrics.frames_received.labels(self.stream).inc()
                pts_s, gap = self.clock.update(frame.pts, frame.time_base)
                if int(frame.width) * int(frame.height) > self.max_pixels:
                    self.frames_too_large += 1
                    if self.metrics is not None:
                        self.metrics.frames_dropped.labels(self.stream, "too_large").inc()
                    continue
                if not self.buffer.put(_Item(frame, pts_s, gap)) and self.metrics is not None:
                    self.metrics.frames_dropped.labels(self.stream, "buffer_full").inc()
        finally:
            self.buffer.close()
            if self._on_close is not None:
                self._on_close()

    async def recv(self) -> Frame:
        """The next frame as RGB with its RTP-clock time; :class:`SourceClosed` at the end."""
        item = await self.buffer.get()
        self.last_gap = item.gap
        if item.gap is not None:
            self._count_gap(item.gap)
        rgb = item.frame.to_ndarray(format="rgb24")
        frame = Frame(rgb=rgb, pts_s=item.pts_s, index=self._index)
        self._index += 1
        return frame

    async def aclose(self) -> None:
        """Stop draining and drop queued frames; idempotent. Does not close the peer."""
        if self._closed:
            return
        self._closed = True
        self.buffer.close()
        self.buffer.clear()
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


def add_bitrate_hints(sdp: str, start_kbps: int) -> str:
    """Add ``x-google-start-bitrate``/``x-google-min-bitrate`` to video fmtp lines.

    aiortc's congestion feedback keeps a browser sender near 0.2-0.5 Mbps, after
    which Chromium halves the resolution; the hint keeps full size and rate.
    ``start_kbps = 0`` returns ``sdp`` unchanged.
    """
    if start_kbps <= 0:
        return sdp
    out: list[str] = []
    in_video = False
    hint = f"x-google-start-bitrate={start_kbps};x-google-min-bitrate={start_kbps // 2}"
    for line in sdp.split("\r\n"):
        if line.startswith("m="):
            in_video = line.startswith("m=video")
        if in_video and line.startswith("a=fmtp:") and "apt=" not in line:
            line = f"{line};{hint}"
        out.append(line)
    return "\r\n".join(out)


def parse_sdp_kinds(sdp: str) -> list[str]:
    """The media kinds of an SDP's m-lines, in order (``video``, ``audio``, ...)."""
    kinds: list[str] = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            kinds.append(line[2:].split(" ", 1)[0])
    return kinds


class WhepSource:
    """Pulls one stream from a WHEP server as a :class:`~monitor.types.FrameSource`.

    ``connect()`` POSTs an SDP offer (one receive-only video transceiver, audio
    offered ``inactive``) with ``Authorization: Bearer <token>`` when a token is
    given, expects ``201`` with the answer and a ``Location``, and starts
    draining. It raises :class:`WebRTCError` when the server refuses, the answer
    is bad, or no frame arrives within ``connect_timeout_s``. ``recv`` raises
    :class:`SourceClosed` when the peer connection fails or closes, or when no
    frame arrives for ``idle_timeout_s``: the stream runner then reconnects.
    ``aclose`` DELETEs the session (best effort) and closes the peer.
    """

    def __init__(
        self,
        url: str,
        stream: str,
        *,
        token: str | None = None,
        http_timeout_s: float = 10.0,
        connect_timeout_s: float = 15.0,
        idle_timeout_s: float = 10.0,
        capacity: int = 8,
        policy: DropPolicy | str = DropPolicy.DROP_OLDEST,
        max_gap_s: float = 0.25,
        max_pixels: int = 3840 * 2160,
        video_codecs: list[str] | None = None,
        metrics: WebRTCMetrics | None = None,
    ) -> None:
        self.url = url
        self.stream = stream
        self._token = token
        self.http_timeout_s = http_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self._capacity = capacity
        self._policy = DropPolicy(policy)
        self._max_gap_s = max_gap_s
        self._max_pixels = max_pixels
        self._codecs = list(video_codecs or [])
        self.metrics = metrics
        self.pc: RTCPeerConnection | None = None
        self.track_source: TrackSource | None = None
        self.session_url: str | None = None
        self._closed = False
        self._failed = asyncio.Event()

    @property
    def last_gap(self) -> GapReason | None:
        """The discontinuity before the frame last returned by :meth:`recv`, if any."""
        return self.track_source.last_gap if self.track_source is not None else None

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        h: dict[str, str] = {}
        if content_type:
            h["Content-Type"] = content_type
        if self._token:
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
        safe_url = redact_url(self.url)
        try:
            timeout = aiohttp.ClientTimeout(total=self.http_timeout_s)
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.post(self.url, data=offer, headers=self._headers(SDP_MIME)) as resp,
            ):
                if resp.status != 201:
                    body = (await resp.content.read(512)).decode("utf-8", "replace")
                    self._count("http_error")
                    raise WebRTCError(
                        f"WHEP server {safe_url} answered {resp.status} (expected 201): "
                        f"{body.strip()[:200]}"
                    )
                location = resp.headers.get("Location")
                answer_bytes = await resp.content.read(MAX_ANSWER_BYTES + 1)
        except TimeoutError as exc:
            self._count("timeout")
            raise WebRTCError(f"WHEP server {safe_url} did not answer in time") from exc
        except aiohttp.ClientError as exc:
            self._count("http_error")
            raise WebRTCError(f"WHEP request to {safe_url} failed: {exc}") from exc
        if len(answer_bytes) > MAX_ANSWER_BYTES:
            self._count("bad_answer")
            raise InputTooLarge(f"WHEP answer from {safe_url} exceeds {MAX_ANSWER_BYTES} bytes")
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
            raise WebRTCError(f"WHEP server {safe_url} sent a bad SDP answer: {exc}") from exc
        # the receiver's track exists once the answer is applied
        self.track_source = TrackSource(
            video.receiver.track,
            self.stream,
            capacity=self._capacity,
            policy=self._policy,
            max_gap_s=self._max_gap_s,
            max_pixels=self._max_pixels,
            metrics=self.metrics,
        )
        self.track_source.start()
        first = asyncio.ensure_future(self.track_source.first_frame.wait())
        failed = asyncio.ensure_future(self._failed.wait())
        try:
            done, _ = await asyncio.wait(
                {first, failed},
                timeout=self.connect_timeout_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            first.cancel()
            failed.cancel()
        if not self.track_source.first_frame.is_set():
            self._count("ice_failed" if failed in done else "timeout")
            raise WebRTCError(
                f"no video from WHEP server {safe_url} within {self.connect_timeout_s:g} s"
            )
        self._count("ok")
        if self.metrics is not None:
            self.metrics.sessions_started.labels("whep").inc()
            self.metrics.setup_seconds.labels("whep").observe(time.monotonic() - t0)
        log.info("WHEP %s: receiving from %s", self.stream, safe_url)

    async def recv(self) -> Frame:
        """The next frame; :class:`SourceClosed` on failure, close or silence."""
        if self.track_source is None:
            await self.connect()
        assert self.track_source is not None
        if self._failed.is_set() and len(self.track_source.buffer) == 0:
            raise SourceClosed(f"WHEP peer connection of {self.stream} ended")
        get = asyncio.ensure_future(self.track_source.recv())
        failed = asyncio.ensure_future(self._failed.wait())
        try:
            done, _ = await asyncio.wait(
                {get, failed}, timeout=self.idle_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            failed.cancel()
            if not get.done():
                get.cancel()
                with contextlib.suppress(asyncio.CancelledError, SourceClosed):
                    await get
        if get in done:
            return get.result()
        if failed in done:
            raise SourceClosed(f"WHEP peer connection of {self.stream} ended")
        raise SourceClosed(f"no frame from WHEP stream {self.stream} for {self.idle_timeout_s:g} s")

    async def aclose(self) -> None:
        """DELETE the WHEP session (best effort) and close the peer; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.track_source is not None:
            await self.track_source.aclose()
        if self.session_url is not None:
            try:
                timeout = aiohttp.ClientTimeout(total=min(self.http_timeout_s, 3.0))
                async with (
                    aiohttp.ClientSession(timeout=timeout) as http,
                    http.delete(self.session_url, headers=self._headers()) as resp,
                ):
                    await resp.read()
            except (TimeoutError, aiohttp.ClientError) as exc:
                log.info("WHEP %s: DELETE of the session failed: %s", self.stream, exc)
        if self.pc is not None:
            await self.pc.close()
            if self.metrics is not None:
                self.metrics.sessions.labels("whep").dec()
                self.metrics.sessions_ended.labels("whep", "closed").inc()
