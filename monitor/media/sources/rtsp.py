"""Network video sources through PyAV: RTSP (TCP by default, UDP option) and HTTP/HLS.

:class:`AVSource` opens the input in a worker thread (open timeout), then a
decode thread with a quit Event reads frames (read timeout) into a bounded
:class:`~monitor.media.sources.base.FrameBuffer` that keeps the latest frames
(``DropPolicy.KEEP_LATEST``). Frames stay in PyAV form; only sampled ones are
converted to RGB, later, on the engine thread. A read timeout or a broken
stream ends the connection with a transient :class:`SourceError` (the stream
manager reconnects); the end of a live stream is reported the same way, since
for a live feed it means the publisher went away.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from typing import Any

from ...config import ServeSourceSettings, StreamSpec
from ...errors import DecodeError, InputError
from ...types import RGBArray, SourceClosed
from ..colour import frame_planes, planes_to_small_rgb
from ..decode import (
    DecodeLimits,
    LiveVideo,
    choose_decode_backend,
    frame_to_rgb,
    frame_to_small_rgb,
    gpu_decode_available,
)
from .base import (
    DropPolicy,
    FrameBuffer,
    LoopWaker,
    SourceContext,
    SourceError,
    SourceFrame,
)

log = logging.getLogger("restrav.sources")

_JOIN_TIMEOUT_S = 2.0


MAX_BUFFER_FRAMES = 1024
"""Upper bound of a sized frame buffer (as ``serve.source.buffer_frames``)."""


PACE_RESYNC_S = 1.0
"""A paced source whose frame times are this far from the wall clock restarts its clock
(1 s: a catch-up burst stays within the engine's per-stream backlog of 24 samples)."""


def is_hls(fmt: str) -> bool:
    """Whether FFmpeg's format name (``"hls"``, ``"hls,applehttp"``) is HLS."""
    return "hls" in fmt.split(",")


def burst_frames(
    fmt: str, fps: float | None, configured: int, hls_segment_s: float,
    frame_bytes: int = 0, max_bytes: int = 0,
) -> int:
    """Decoded frames to buffer for a source: ``configured``, or for HLS (FFmpeg's ``hls``
    demuxer hands over a whole segment in one burst) a segment's worth at the stream's
    rate (25 fps when unknown), at most :data:`MAX_BUFFER_FRAMES` and, given the size of
    one decoded frame, at most ``max_bytes`` of frames (never below ``configured``)."""
    if not is_hls(fmt):
        return configured
    segment = math.ceil((fps or 25.0) * hls_segment_s)
    cap = MAX_BUFFER_FRAMES
    if frame_bytes > 0 and max_bytes > 0:
        cap = min(cap, max_bytes // frame_bytes)
    return max(configured, min(cap, segment))


class AVSource:
    """One PyAV connection (see the module docstring). Build with :meth:`open`."""

    def __init__(
        self,
        url: str,
        description: str,
        limits: DecodeLimits,
        options: dict[str, str] | None = None,
        buffer_frames: int = 8,
        policy: DropPolicy = DropPolicy.KEEP_LATEST,
        live: bool = True,
        cuda_device: int | None = None,
        hls_segment_s: float = 6.0,
        hls_buffer_bytes: int = 0,
        waker: LoopWaker | None = None,
    ) -> None:
        self._url = url
        self._waker = waker
        self.description = description
        self.cuda_device = cuda_device
        self._limits = limits
        self._options = options or {}
        self._buffer_frames = buffer_frames
        self._hls_segment_s = hls_segment_s
        self._hls_buffer_bytes = hls_buffer_bytes
        self._policy = policy
        self.live = live
        self._quit = threading.Event()
        self._thread: threading.Thread | None = None
        self._buffer: FrameBuffer | None = None
        self._video: LiveVideo | None = None
        self.frames_read = 0
        self._paced = False
        self._clock0: float | None = None
        self._pts0 = 0.0

    @classmethod
    async def open(cls, spec: StreamSpec, ctx: SourceContext) -> AVSource:
        """Connect to ``ctx.url`` as ``spec`` says (the ``rtsp``/``http`` opener)."""
        s = ctx.settings
        options: dict[str, str] = {}
        if ctx.url.lower().startswith(("rtsp://", "rtsps://")):
            options["rtsp_transport"] = spec.transport or s.rtsp_transport
        src = cls(
            ctx.url,
            ctx.description,
            _limits(ctx),
            options,
            buffer_frames=s.buffer_frames,
            cuda_device=nvdec_device(s),
            hls_segment_s=s.hls_segment_s,
            hls_buffer_bytes=s.hls_buffer_mib << 20,
            waker=ctx.waker,
        )
        await src.start()
        return src

    def _open_video(self) -> LiveVideo:
        video = LiveVideo(
            self._url, self._limits, self._options, self.description, self.cuda_device
        )
        if video.fallback_reason is not None:
            log.warning("%s: GPU decoding unavailable, decoding on the CPU: %s",
                        self.description, video.fallback_reason)
        return video

    async def start(self) -> None:
        """Open the input (in a thread) and start the decode thread."""
        try:
            self._video = await asyncio.to_thread(self._open_video)
        except InputError as exc:
            raise SourceError(
                exc.message.replace(self._url, self.description),
                code=exc.code,
                permanent=self._permanent(exc),
            ) from None
        info = self._video.info
        # FFmpeg's hls demuxer hands a whole segment (4-10 s) over at once: released as
        # it comes, a segment is a burst of samples larger than the engine's per-stream
        # backlog, and whole windows are skipped as overload. Paced at its own frame
        # times, a live HLS feed reaches the engine as an RTSP feed does.
        self._paced = self._paced or is_hls(info.format)
        self._buffer_frames = burst_frames(
            info.format, info.fps, self._buffer_frames, self._hls_segment_s,
            # a decoded 4:2:0 frame (NV12/YUV420P): 1.5 bytes a pixel
            frame_bytes=info.width * info.height * 3 // 2, max_bytes=self._hls_buffer_bytes,
        )
        self._buffer = FrameBuffer(asyncio.get_running_loop(), self._buffer_frames, self._policy,
                                   self._waker)
        self._thread = threading.Thread(
            target=self._run, name=f"decode:{self.description[:40]}", daemon=True
        )
        self._thread.start()

    def _permanent(self, exc: InputError) -> bool:
        """Network inputs: every failure may heal (server restarts); override for files."""
        return False

    def _pace(self, pts_s: float) -> None:
        """When paced (HLS, files played in real time): wait until ``pts_s`` is due on the
        wall clock, counted from the first frame. A clock more than
        :data:`PACE_RESYNC_S` off (behind after a stall, or a timestamp jump ahead) is
        set again at this frame: never a catch-up burst, never a long wait."""
        if not self._paced:
            return
        now = time.monotonic()
        delay = (pts_s - self._pts0) - (now - self._clock0) if self._clock0 is not None else 0.0
        if self._clock0 is None or not -PACE_RESYNC_S <= delay <= PACE_RESYNC_S:
            self._clock0, self._pts0 = now, pts_s
            return
        if delay > 0:
            self._quit.wait(delay)

    def _frames(self, video: LiveVideo) -> Any:
        return video.frames()

    def _run(self) -> None:
        assert self._video is not None and self._buffer is not None
        video, buf = self._video, self._buffer
        error: BaseException | None = None
        frames = self._frames(video)
        try:
            for av_frame, pts in frames:
                if self._quit.is_set():
                    break
                self._pace(pts)
                frame = SourceFrame(
                    pts_s=pts,
                    arrival_s=time.monotonic(),
                    index=self.frames_read,
                    image=av_frame,
                    to_rgb=frame_to_rgb,
                    to_planes=frame_planes,
                    to_small=small_rgb,
                )
                self.frames_read += 1
                if not buf.put(frame, self._quit):
                    break
            else:
                if self.live and not self._quit.is_set():
                    error = SourceError(f"{self.description}: stream ended", code="eof")
        except DecodeError as exc:
            # FFmpeg's own message names the URL it was given: keep only the redacted form
            error = SourceError(exc.message.replace(self._url, self.description), code=exc.code)
        finally:
            # release decoder threads and buffers now, not at the next cyclic GC: the
            # generator's frame holds the stream, and the error put in the buffer holds
            # a traceback (a cycle through this source)
            frames.close()
            video.close()
            if self._video is not video:  # a looped file reopened itself
                self._video.close()
            self._video = None
            buf.close(error)

    async def recv(self) -> SourceFrame:
        """The next decoded frame (see :class:`~monitor.media.sources.base.LiveSource`)."""
        if self._buffer is None:
            raise SourceClosed("source not started")
        return await self._buffer.get()

    async def recv_due(self, next_pts_s: float | None) -> list[SourceFrame]:
        """The buffered frames, once one may close ``next_pts_s``
        (:meth:`~monitor.media.sources.base.FrameBuffer.get_due`)."""
        if self._buffer is None:
            raise SourceClosed("source not started")
        return await self._buffer.get_due(next_pts_s)

    @property
    def dropped(self) -> int:
        """Frames dropped by the buffer so far."""
        return self._buffer.dropped if self._buffer is not None else 0

    async def aclose(self) -> None:
        """Stop the decode thread (it exits at its next frame or read timeout)."""
        self._quit.set()
        if self._buffer is not None:
            self._buffer.close()
        t = self._thread
        if t is not None and t.is_alive():
            await asyncio.to_thread(t.join, _JOIN_TIMEOUT_S)
            if t.is_alive():
                log.debug("decode thread of %s still in a blocking read", self.description)


def small_rgb(frame: Any, width: int, scaler: Any = None) -> RGBArray:
    """A decoded frame at most ``width`` px wide, RGB ``uint8`` on the host (evidence and
    thumbnails): software frames through swscale (:func:`frame_to_small_rgb`, with the
    caller's ``scaler``), NVDEC frames (format ``cuda``) scaled on their GPU by torch
    (:func:`~monitor.media.colour.planes_to_small_rgb`: only the small image is copied).
    ValueError for a frame neither can scale (a hardware format other than NV12)."""
    if frame.format.name == "cuda":
        planes = frame_planes(frame)
        if planes is None:
            sw = getattr(frame.sw_format, "name", None)
            raise ValueError(f"cannot scale a hardware frame of {sw}")
        return planes_to_small_rgb(planes, width)
    return frame_to_small_rgb(frame, width, scaler)


def nvdec_device(settings: ServeSourceSettings) -> int | None:
    """The CUDA device to decode on, or None for the CPU (``auto`` not yet resolved by
    serve counts as the CPU)."""
    return settings.decode_device if settings.decode_backend == "nvdec" else None


def resolve_decode_backend(src: ServeSourceSettings, model_device: str) -> ServeSourceSettings:
    """Settle ``decode_backend`` (``auto``) once the model's device is known (serve does
    this at start); NVDEC picked by ``auto`` decodes on the model's GPU."""
    backend = choose_decode_backend(src.decode_backend, model_device, gpu_decode_available())
    device = src.decode_device
    if src.decode_backend == "auto" and backend == "nvdec" and ":" in model_device:
        device = int(model_device.split(":", 1)[1])
    if src.decode_backend == "nvdec" and backend == "cpu":
        log.warning("source.decode_backend is nvdec but this FFmpeg has no CUDA support: "
                    "decoding on the CPU")
    log.info("streams decode on %s", f"NVDEC (cuda:{device})" if backend == "nvdec" else "the CPU")
    return src.model_copy(update={"decode_backend": backend, "decode_device": device})


def _limits(ctx: SourceContext) -> DecodeLimits:
    s = ctx.settings
    return DecodeLimits(
        open_timeout_s=s.open_timeout_s,
        read_timeout_s=s.read_timeout_s,
        max_pixels=ctx.max_pixels,
        threads=ctx.decode_threads,
    )
