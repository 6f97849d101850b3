"""The latest sampled frame of every stream, for the operator page's thumbnails.

Contract:

* :class:`ThumbnailStore` keeps, per stream that is :meth:`~ThumbnailStore.open`, at most
  one frame (a :class:`~monitor.live.evidence.frames.KeptFrame`: small JPEG, its times):
  the newest put replaces the previous one. A frame over ``stream_bytes`` is refused, and
  so is one that would take the total over ``memory_bytes`` (:meth:`~ThumbnailStore.put`
  returns False: the caller counts it). Frames of a stream that is not open (removed
  meanwhile) are ignored. Thread-safe: puts come from the capture threads, gets from the
  event loop.
* :meth:`~ThumbnailStore.due` is the throttle, called on the event loop for each sample:
  True at most once per ``interval_s`` per open stream (the caller then has one frame
  encoded), so a thumbnail costs one encode a second whatever the sampling rate.
"""

from __future__ import annotations

import threading

from .frames import KeptFrame


class ThumbnailStore:
    """The newest small frame per stream under byte bounds (see the module docstring)."""

    def __init__(self, stream_bytes: int, memory_bytes: int, interval_s: float) -> None:
        self.stream_bytes = stream_bytes
        self.memory_bytes = memory_bytes
        self.interval_s = interval_s
        self._latest: dict[str, KeptFrame | None] = {}
        self._due_at: dict[str, float] = {}
        self._total = 0
        self._lock = threading.Lock()

    @property
    def total_bytes(self) -> int:
        """Bytes of JPEG held, all streams."""
        return self._total

    def open(self, stream_id: str) -> None:
        """Start keeping ``stream_id``'s thumbnail (idempotent)."""
        with self._lock:
            self._latest.setdefault(stream_id, None)

    def forget(self, stream_id: str) -> None:
        """Drop ``stream_id``'s thumbnail and stop keeping one."""
        with self._lock:
            old = self._latest.pop(stream_id, None)
            self._due_at.pop(stream_id, None)
            if old is not None:
                self._total -= len(old.jpeg)

    def due(self, stream_id: str, now_s: float) -> bool:
        """True when ``stream_id`` is open and its last thumbnail was asked for at least
        ``interval_s`` before ``now_s`` (then counts this one as asked for)."""
        if stream_id not in self._latest or now_s < self._due_at.get(stream_id, 0.0):
            return False
        self._due_at[stream_id] = now_s + self.interval_s
        return True

    def put(self, stream_id: str, frame: KeptFrame) -> bool:
        """Make ``frame`` the stream's thumbnail; False when refused by a bound."""
        size = len(frame.jpeg)
        with self._lock:
            if stream_id not in self._latest:
                return True
            old = self._latest[stream_id]
            freed = len(old.jpeg) if old is not None else 0
            if size > self.stream_bytes or self._total - freed + size > self.memory_bytes:
                return False
            self._latest[stream_id] = frame
            self._total += size - freed
        return True

    def get(self, stream_id: str) -> KeptFrame | None:
        """The stream's thumbnail, or None (none yet, or not open)."""
        return self._latest.get(stream_id)
