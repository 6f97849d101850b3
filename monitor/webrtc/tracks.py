"""WebRTC tracks as live sources: aiortc tracks drained into our bounded buffer.

Contract (the live source contract of :mod:`monitor.media.sources.base`):

* :class:`TrackSource` wraps one aiortc video track (a remote
  ``MediaStreamTrack``) as a live source. A drain task pulls every decoded
  frame out of aiortc *at once* (aiortc's own queues are unbounded, so a slow
  consumer would make them grow and lag behind real time) into a
  :class:`~monitor.media.sources.base.FrameBuffer` that keeps the latest
  ``capacity`` frames; drops are counted and reach the stream runner as
  ``dropped_before``, which ends the window. Frames stay in YUV until the
  engine converts the few the 11.5 Hz grid samples.
* Timestamps come from the RTP clock: ``pts * time_base`` of the decoded frame
  (aiortc rebases the 90 kHz RTP timestamp to 0 and unwraps it), never from
  arrival times. The stream's :class:`~monitor.media.sampler.LiveSampler` ends the
  window on a jump beyond ``gap_tolerance_s`` (packet loss, a frozen
  publisher) or a clock going back, like any gap.
* The WHEP pull client, which receives such tracks, is :mod:`monitor.webrtc.whep`;
  the WHIP endpoint, which gets them from publishers, is :mod:`monitor.webrtc.whip`.

Audio is accepted and ignored: audio transceivers are answered or offered
``inactive``, so no audio is sent, decoded or queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from aiortc import (
    RTCConfiguration,
    RTCRtpReceiver,
    RTCRtpTransceiver,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from ..media.colour import frame_planes
from ..media.decode import frame_to_rgb, frame_to_small_rgb
from ..media.sources.base import (
    DropPolicy,
    FrameBuffer,
    SourceError,
    SourceFrame,
)
from ..metrics import WebRTCMetrics

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


def rtp_seconds(frame: Any) -> float:
    """A decoded frame's time on the RTP clock: ``pts * time_base`` in seconds.

    aiortc rebases the 90 kHz RTP timestamp of each receiver to 0 and unwraps
    it, so this is seconds since the first frame of the connection.
    """
    if frame.pts is None or frame.time_base is None:
        raise WebRTCError("decoded frame without a timestamp", code="no_timestamp")
    return float(frame.pts * frame.time_base)


class TrackSource:
    """A :class:`~monitor.media.sources.base.LiveSource` over one aiortc video track.

    :meth:`start` launches the drain task (call it once the track exists, i.e.
    after the remote description is applied): every decoded frame is taken from
    aiortc at once and put into a :class:`~monitor.media.sources.base.FrameBuffer` of
    ``capacity`` frames that keeps the latest (drops counted in
    ``dropped_before`` of the next frame). :meth:`recv` returns
    :class:`~monitor.media.sources.base.SourceFrame` objects with RTP-clock times;
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
                        to_rgb=frame_to_rgb,  # aiortc's frames are PyAV's: as RTSP's
                        to_planes=frame_planes,
                        to_small=frame_to_small_rgb,
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

    async def recv_due(self, next_pts_s: float | None) -> list[SourceFrame]:
        """The buffered frames, once one may close ``next_pts_s``
        (:meth:`~monitor.media.sources.base.FrameBuffer.get_due`); errors as :meth:`recv`."""
        if self.buffer is None:
            raise RuntimeError("TrackSource.recv_due() before start()")
        return await self.buffer.get_due(next_pts_s)

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
