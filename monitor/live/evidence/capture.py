"""Downscaling and compressing sampled frames off the event loop.

Contract: :meth:`FrameCapture.offer` is called on the event loop for every sample a
stream submits to the engine and never blocks: the sample goes to a bounded queue
(``capture_queue``; when full the frame is dropped and counted ``queue_full``). One
thread scales each frame to ``frame_width`` (:meth:`SourceFrame.small_rgb`, one
swscale pass with the thread's own context: the engine may be converting the same
frame), JPEG-encodes it and puts it in the :class:`FrameStore` (refusals
counted ``memory_full``; frames that cannot be scaled ``convert_error``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from ...media.decode import new_scaler
from ...media.stills import encode_jpeg
from ...metrics import EvidenceMetrics
from ...types import RGBArray
from .frames import FrameStore, KeptFrame
from .worker import QueueThread

log = logging.getLogger("restrav.evidence")


@runtime_checkable
class SmallFrame(Protocol):
    """What a sample's frame must offer (:class:`~monitor.media.sources.SourceFrame`)."""

    def small_rgb(self, width: int, scaler: Any = None) -> RGBArray:
        """The frame at most ``width`` px wide, RGB; ValueError if it cannot be scaled.
        ``scaler`` is the calling thread's own scaling context."""
        ...


_Item = tuple[str, int, int, float, float, bool, SmallFrame]


class FrameCapture(QueueThread[_Item]):
    """The compressing thread and its bounded queue (see the module docstring)."""

    name = "evidence-capture"

    def __init__(self, store: FrameStore, width: int, quality: int, queue_max: int,
                 metrics: EvidenceMetrics | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(queue_max)
        self.store = store
        self.width = width
        self.quality = quality
        self.metrics = metrics
        self.clock = clock
        self.dropped: dict[str, int] = {}
        self._warned = False
        self._scaler: Any = None

    def offer(self, stream_id: str, segment: int, k: int, time_s: float, repeated: bool,
              frame: SmallFrame) -> None:
        """Queue one sample's frame for retention; never blocks (drops when full)."""
        if not self.put((stream_id, segment, k, time_s, self.clock(), repeated, frame)):
            self._count("queue_full")

    def _count(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        if self.metrics is not None:
            self.metrics.frames_dropped.labels(reason).inc()

    def setup(self) -> None:
        """This thread's own scaling context: never a frame's shared one."""
        self._scaler = new_scaler()

    def handle(self, item: _Item) -> None:
        """Scale, compress and retain one frame."""
        sid, segment, k, time_s, wall_s, repeated, frame = item
        try:
            rgb = frame.small_rgb(self.width, self._scaler)
        except ValueError as exc:
            self._count("convert_error")
            if not self._warned:  # once: a source whose frames never scale (hardware)
                self._warned = True
                log.warning("stream %s: a frame could not be kept for evidence: %s", sid, exc)
            return
        kept = KeptFrame(segment, k, time_s, wall_s, repeated, encode_jpeg(rgb, self.quality),
                         int(rgb.shape[1]), int(rgb.shape[0]))
        if not self.store.put(sid, kept):
            self._count("memory_full")
        if self.metrics is not None:
            self.metrics.frames_bytes.set(self.store.total_bytes)
