"""The retained frames of every stream: a bounded, thread-safe store of small JPEGs.

Contract:

* :class:`FrameStore` keeps, per stream that is :meth:`~FrameStore.open`, the last
  ``keep`` sampled frames (:class:`KeptFrame`: JPEG bytes, segment, sample index and
  times), at most ``stream_bytes`` per stream (the oldest go first) and at most
  ``memory_bytes`` in all: a frame that would pass the total is refused (the caller
  counts it). Frames of a stream that is not open (removed meanwhile) are ignored.
* :meth:`~FrameStore.window` returns a window's frames (one segment, sample times
  within ``[start_s, end_s]``), :meth:`~FrameStore.wait_window` waits for them with a
  deadline, :meth:`~FrameStore.latest` is the stream's newest retained frame.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass

_EPS_S = 1e-6


@dataclass(frozen=True, slots=True)
class KeptFrame:
    """One sampled frame as retained: ``time_s`` on the source clock (as in scores),
    ``wall_s`` the Unix time it was sampled, ``repeated`` as the sampler said."""

    segment: int
    k: int
    time_s: float
    wall_s: float
    repeated: bool
    jpeg: bytes
    width: int
    height: int


class FrameStore:
    """Per-stream rings of :class:`KeptFrame` under byte bounds (see the module docstring)."""

    def __init__(self, keep: int, stream_bytes: int, memory_bytes: int) -> None:
        self.keep = keep
        self.stream_bytes = stream_bytes
        self.memory_bytes = memory_bytes
        self._rings: dict[str, collections.deque[KeptFrame]] = {}
        self._bytes: dict[str, int] = {}
        self._total = 0
        self._cond = threading.Condition()

    @property
    def total_bytes(self) -> int:
        """Bytes of JPEG retained, all streams."""
        return self._total

    def bytes_of(self, stream_id: str) -> int:
        """Bytes of JPEG retained for one stream (0 when not open)."""
        return self._bytes.get(stream_id, 0)

    def open(self, stream_id: str) -> None:
        """Start retaining frames of ``stream_id`` (idempotent)."""
        with self._cond:
            self._rings.setdefault(stream_id, collections.deque())
            self._bytes.setdefault(stream_id, 0)

    def forget(self, stream_id: str) -> None:
        """Drop every frame of ``stream_id`` and stop retaining its frames."""
        with self._cond:
            self._rings.pop(stream_id, None)
            self._total -= self._bytes.pop(stream_id, 0)
            self._cond.notify_all()

    def put(self, stream_id: str, frame: KeptFrame) -> bool:
        """Retain ``frame``; False when refused (``memory_bytes`` reached, or a single
        frame over ``stream_bytes``). Frames of a stream not open are ignored (True)."""
        size = len(frame.jpeg)
        with self._cond:
            ring = self._rings.get(stream_id)
            if ring is None:
                return True
            if size > self.stream_bytes:
                return False
            used = self._bytes[stream_id]
            freed = 0
            # what the stream's own bound and count will evict makes room first
            over = used + size - self.stream_bytes
            dropped = 0
            for old in ring:
                if over - freed <= 0 and len(ring) - dropped < self.keep:
                    break
                freed += len(old.jpeg)
                dropped += 1
            if self._total - freed + size > self.memory_bytes:
                return False
            for _ in range(dropped):
                ring.popleft()
            ring.append(frame)
            self._bytes[stream_id] = used - freed + size
            self._total += size - freed
            self._cond.notify_all()
        return True

    def latest(self, stream_id: str) -> KeptFrame | None:
        """The stream's newest retained frame, or None."""
        with self._cond:
            ring = self._rings.get(stream_id)
            return ring[-1] if ring else None

    def window(self, stream_id: str, segment: int, start_s: float, end_s: float
               ) -> list[KeptFrame]:
        """The retained frames of one window, in sample order."""
        with self._cond:
            return self._window(stream_id, segment, start_s, end_s)

    def _window(self, stream_id: str, segment: int, start_s: float, end_s: float
                ) -> list[KeptFrame]:
        ring = self._rings.get(stream_id) or ()
        return [f for f in ring if f.segment == segment
                and start_s - _EPS_S <= f.time_s <= end_s + _EPS_S]

    def wait_window(self, stream_id: str, segment: int, start_s: float, end_s: float,
                    count: int, timeout_s: float) -> list[KeptFrame]:
        """:meth:`window` once it holds ``count`` frames, or once no more can come (a
        later frame is retained, or the stream was forgotten), or at the deadline."""
        deadline = time.monotonic() + timeout_s

        def ready() -> bool:
            ring = self._rings.get(stream_id)
            if not ring:
                return ring is None
            last = ring[-1]
            if last.segment != segment or last.time_s > end_s + _EPS_S:
                return True
            return len(self._window(stream_id, segment, start_s, end_s)) >= count

        with self._cond:
            while not ready():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return self._window(stream_id, segment, start_s, end_s)
