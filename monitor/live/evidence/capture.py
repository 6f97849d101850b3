"""Downscaling and compressing sampled frames off the event loop, for evidence and
thumbnails.

Contract: :meth:`FrameCapture.offer` is called on the event loop for every sample a
stream submits to the engine and never blocks. A sample is wanted when its stream keeps
evidence (``keep``: every sample goes to the :class:`FrameStore`) or when its stream's
thumbnail is due (:meth:`ThumbnailStore.due`: at most one a stream per interval); an
unwanted sample costs nothing. A wanted one goes to a bounded queue (when full the frame
is dropped and counted ``queue_full``). A pool of ``threads`` capture threads, each with
its own queue (``capture_queue`` shared out among them) and its own swscale context (the
engine may be converting the same frame), scales each frame to ``width``
(:meth:`SourceFrame.small_rgb`), JPEG-encodes it once and puts it in the
:class:`FrameStore` (refusals counted ``memory_full``) and/or the
:class:`ThumbnailStore` (``thumbnail_memory_full``); frames that cannot be scaled count
``convert_error``. A stream always goes to the same thread, so its frames reach the
stores in sample order.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from ...media.decode import new_scaler
from ...media.stills import encode_jpeg
from ...metrics import EvidenceMetrics
from ...types import RGBArray
from .frames import FrameStore, KeptFrame
from .thumbs import ThumbnailStore
from .worker import QueueThread

log = logging.getLogger("restrav.evidence")


@runtime_checkable
class SmallFrame(Protocol):
    """What a sample's frame must offer (:class:`~monitor.media.sources.SourceFrame`)."""

    def small_rgb(self, width: int, scaler: Any = None) -> RGBArray:
        """The frame at most ``width`` px wide, RGB; ValueError if it cannot be scaled.
        ``scaler`` is the calling thread's own scaling context."""
        ...


# stream, segment, k, time_s, wall_s, repeated, frame, keep (evidence), thumbnail
_Item = tuple[str, int, int, float, float, bool, SmallFrame, bool, bool]


def default_capture_threads(cpus: int | None = None) -> int:
    """Capture threads for ``serve.evidence.capture_threads: 0``: half the CPUs, 1 to 4
    (one thread keeps up with about 30-85 streams of 720p; scoring needs the rest)."""
    return max(1, min(4, (cpus if cpus is not None else os.cpu_count() or 1) // 2))


class _Shard(QueueThread[_Item]):
    """One capture thread and its queue; the work is :meth:`FrameCapture.handle`."""

    def __init__(self, owner: FrameCapture, queue_max: int, index: int) -> None:
        super().__init__(queue_max)
        self.owner = owner
        self.name = f"evidence-capture-{index}"

    def setup(self) -> None:
        """This thread's own scaling context: never a frame's shared one."""
        self.owner._local.scaler = new_scaler()

    def handle(self, item: _Item) -> None:
        """Scale, compress and keep one frame."""
        self.owner.handle(item)


class FrameCapture:
    """The compressing threads and their bounded queues (see the module docstring)."""

    def __init__(self, store: FrameStore | None, width: int, quality: int, queue_max: int,
                 metrics: EvidenceMetrics | None = None,
                 clock: Callable[[], float] = time.time,
                 thumbs: ThumbnailStore | None = None, threads: int = 1) -> None:
        if threads < 1:
            raise ValueError("FrameCapture needs at least one thread")
        self.store = store
        self.thumbs = thumbs
        self.width = width
        self.quality = quality
        self.metrics = metrics
        self.clock = clock
        self.dropped: dict[str, int] = {}
        self._warned = False
        self._local = threading.local()
        per = max(1, -(-queue_max // threads))
        self._shards = [_Shard(self, per, i) for i in range(threads)]

    @property
    def threads(self) -> int:
        """How many capture threads (and queues) there are."""
        return len(self._shards)

    def start(self) -> None:
        """Start every capture thread (idempotent)."""
        for s in self._shards:
            s.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Compress what is queued and stop, within about ``timeout_s``."""
        for s in self._shards:
            s.stop(timeout_s / len(self._shards))

    def idle(self) -> bool:
        """True when no frame waits or is being compressed."""
        return all(s.idle() for s in self._shards)

    def put(self, item: _Item) -> bool:
        """Queue ``item`` on its stream's thread; False (nothing queued) when full."""
        shards = self._shards
        return shards[zlib.crc32(item[0].encode()) % len(shards)].put(item)

    def offer(self, stream_id: str, segment: int, k: int, time_s: float, repeated: bool,
              frame: SmallFrame, keep: bool = True) -> None:
        """Queue one sample's frame when it is wanted (``keep`` for evidence, or its
        stream's thumbnail is due); never blocks (drops when full, counted)."""
        keep = keep and self.store is not None
        now = self.clock()
        thumb = self.thumbs is not None and self.thumbs.due(stream_id, now)
        if not (keep or thumb):
            return
        if not self.put((stream_id, segment, k, time_s, now, repeated, frame, keep, thumb)):
            self._count("queue_full")

    def _count(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        if self.metrics is not None:
            self.metrics.frames_dropped.labels(reason).inc()

    def handle(self, item: _Item) -> None:
        """On a capture thread: scale, compress once, and keep one frame."""
        sid, segment, k, time_s, wall_s, repeated, frame, keep, thumb = item
        try:
            rgb = frame.small_rgb(self.width, getattr(self._local, "scaler", None))
        except ValueError as exc:
            self._count("convert_error")
            if not self._warned:  # once: a source whose frames never scale
                self._warned = True
                log.warning("stream %s: a sampled frame could not be kept (evidence, "
                            "thumbnail): %s", sid, exc)
            return
        kept = KeptFrame(segment, k, time_s, wall_s, repeated, encode_jpeg(rgb, self.quality),
                         int(rgb.shape[1]), int(rgb.shape[0]))
        if keep and self.store is not None and not self.store.put(sid, kept):
            self._count("memory_full")
        if thumb and self.thumbs is not None and not self.thumbs.put(sid, kept):
            self._count("thumbnail_memory_full")
        if self.metrics is not None:
            if self.store is not None:
                self.metrics.frames_bytes.set(self.store.total_bytes)
            if self.thumbs is not None:
                self.metrics.thumbnails_bytes.set(self.thumbs.total_bytes)
