"""Load shedding that keeps goodput: whole streams take turns, whole windows are yielded.

Contract:

* :class:`BatchCost` fits the device worker's busy time per batch as
  ``fixed_s + per_sample_s * n`` (exponentially decayed least squares over recent
  batches) and answers the worker's capacity in samples per second at a batch size.
* :func:`derive_sizes` turns that fit and the number of streams into the engine's
  batch limit and queue bound (``serve.engine.max_batch`` / ``queue_samples`` left
  unset): a batch large enough that the fixed cost is at most 5 % of it, small
  enough to finish within a latency budget, and a queue that holds every stream's
  samples for ``headroom_s`` (a collector pause or a slow batch does not overflow it).
* :class:`Shedder` decides, per submitted sample, whether its stream runs or yields.
  At most ``slots`` streams hold a slot at once (the engine sets ``slots`` from the
  measured capacity and the 11.5 Hz rate of a live stream); the others yield and
  wait in a queue ordered by priority (higher first) and then by arrival (fair
  rotation). A holder gives its slot up only at a *release point*: after at least 24
  consecutive accepted samples and on its hop, so that every sample it had accepted
  ended in a scored window. It gives the slot up when the slots are over-committed
  (the lowest priority first), when a waiter of higher priority exists, or when it ran
  its quantum (``run_windows`` windows) and a waiter of the same priority waits. A
  freed slot is granted to the head of the queue at once; the granted stream starts
  a fresh window with its next sample. A yielding stream drops every sample (counted
  as one yielded window per 24); no accepted sample is wasted by the rotation.
* Holders that stop submitting (paused, stalled) lose their slot after
  ``idle_release_s`` (:meth:`Shedder.tick`); they queue again with their next sample.
* Cost: :meth:`Shedder.admit` is O(1) per sample (a heap push or pop, O(log N), only
  when a stream changes turn); :meth:`Shedder.tick` is O(N) and runs a few times a
  second, not per sample. Not thread-safe: the engine calls it under its lock.
"""

from __future__ import annotations

import heapq
import math

from ..types import WINDOW_SAMPLES

MAX_DERIVED_BATCH = 256
"""The largest batch limit :func:`derive_sizes` picks (the embedder is sized for it)."""

ACCEPT = 0
"""The sample goes to the device."""
YIELD = 1
"""The stream yields: the sample is dropped, inside an already counted yielded window."""
YIELD_WINDOW = 2
"""The stream yields and this sample starts a new yielded window (count it)."""


class BatchCost:
    """``busy_s(n) = fixed_s + per_sample_s * n`` fitted over recent batches.

    River-style: :meth:`update` with each batch's size and busy seconds, :meth:`get`
    the current ``(fixed_s, per_sample_s)`` (None before the first batch). Weights
    decay by ``decay`` per batch, so the fit follows a device that slows down
    (thermal limits, a neighbour on the GPU). When recent batches all had about the
    same size the slope is not identifiable and the whole cost is taken as per sample
    (``fixed_s = 0``): the capacity at that size is then still exact.
    """

    def __init__(self, decay: float = 0.98) -> None:
        self.decay = decay
        self._w = 0.0
        self._n = 0.0
        self._t = 0.0
        self._nn = 0.0
        self._nt = 0.0

    def update(self, n: int, busy_s: float) -> None:
        """Add one batch of ``n`` samples that kept the worker busy ``busy_s`` seconds."""
        d = self.decay
        self._w = self._w * d + 1.0
        self._n = self._n * d + n
        self._t = self._t * d + busy_s
        self._nn = self._nn * d + n * n
        self._nt = self._nt * d + n * busy_s

    def get(self) -> tuple[float, float] | None:
        """``(fixed_s, per_sample_s)``, or None before any batch."""
        if self._w <= 0.0 or self._n <= 0.0:
            return None
        mean_n = self._n / self._w
        mean_t = self._t / self._w
        var_n = self._nn / self._w - mean_n * mean_n
        if var_n > 0.25 * max(1.0, mean_n):  # sizes vary enough to separate the two terms
            slope = (self._nt / self._w - mean_n * mean_t) / var_n
            fixed = mean_t - slope * mean_n
            if slope > 0.0 and fixed >= 0.0:
                return fixed, slope
        return 0.0, mean_t / mean_n

    def capacity(self, batch: int) -> float | None:
        """Samples per second the worker sustains with batches of ``batch``; None unknown."""
        fit = self.get()
        if fit is None:
            return None
        fixed, per = fit
        cost = fixed + per * batch
        return batch / cost if cost > 0.0 else None


def derive_sizes(
    fixed_s: float, per_sample_s: float, streams: int, stream_hz: float,
    min_batch: int = 16, max_batch: int = MAX_DERIVED_BATCH, latency_budget_s: float = 0.25,
    headroom_s: float = 0.5, min_queue: int = 256, max_queue: int = 100_000,
) -> tuple[int, int]:
    """``(batch limit, queue bound)`` for a worker whose batch costs
    ``fixed_s + per_sample_s * n`` and ``streams`` streams at ``stream_hz``.

    The batch limit is the smallest size at which the fixed cost is at most 5 % of the
    batch (19 x fixed / per sample), within ``[min_batch, max_batch]`` and no larger than
    what finishes within ``latency_budget_s``. The queue holds ``headroom_s`` of every
    stream's samples and at least four full batches, within ``[min_queue, max_queue]``.
    """
    batch = min_batch
    if per_sample_s > 0.0:
        # fixed cost at most 5 % of a batch: a saturated device loses little to it
        batch = max(batch, math.ceil(19.0 * fixed_s / per_sample_s - 1e-9))  # float noise
        batch = min(batch, max(min_batch, int((latency_budget_s - fixed_s) / per_sample_s)))
    batch = max(min_batch, min(max_batch, batch))
    queue = max(min_queue, 4 * batch, math.ceil(streams * stream_hz * headroom_s))
    return batch, min(max_queue, queue)


class _Turn:
    """One stream's turn state (see :class:`Shedder`)."""

    __slots__ = ("granted", "hop", "idle", "last_s", "priority", "run_len", "running",
                 "ticket", "windows_yielded", "yielded")

    def __init__(self, priority: int, hop: int, now: float) -> None:
        self.priority = priority
        self.hop = hop
        self.running = False  # holds a slot and has started its run
        self.granted = False  # holds a slot, starts its run with its next sample
        self.idle = False  # lost its slot (or its place) for not submitting
        self.run_len = 0  # samples accepted in the current run
        self.yielded = 0  # samples dropped in the current yield stretch
        self.ticket = 0  # position in the waiting queue (valid while waiting)
        self.last_s = now
        self.windows_yielded = 0


class Shedder:
    """Which streams run and which yield (see the module docstring)."""

    def __init__(self, run_windows: int = 4, idle_release_s: float = 1.0) -> None:
        self.run_windows = max(1, run_windows)
        self.idle_release_s = idle_release_s
        self.slots = 1 << 30  # unlimited until the engine knows its capacity
        self.holding = 0  # running + granted
        self.yielding = 0  # streams waiting for a slot (not holding one, not idle)
        self._turns: dict[str, _Turn] = {}
        self._held_by_priority: dict[int, int] = {}
        self._waiting: list[tuple[int, int, str]] = []  # (-priority, ticket, stream)
        self._ticket = 0

    # --- membership ------------------------------------------------------------------

    def add(self, sid: str, priority: int, hop: int, now: float) -> None:
        """Register a stream; it runs at once if a slot is free, else it queues."""
        self.remove(sid)
        t = _Turn(priority, hop, now)
        self._turns[sid] = t
        self.yielding += 1
        self._enqueue(sid, t)
        self._grant()

    def remove(self, sid: str) -> None:
        """Forget a stream (its slot, if any, goes to the next waiter)."""
        t = self._turns.pop(sid, None)
        if t is None:
            return
        if t.running or t.granted:
            self._unhold(t)
            self._grant()
        elif not t.idle:
            self.yielding -= 1
        # a stale heap entry is skipped when popped (its stream is gone)

    def is_yielding(self, sid: str) -> bool:
        """Whether ``sid`` currently yields its samples."""
        t = self._turns.get(sid)
        return t is not None and not (t.running or t.granted or t.idle)

    def windows_yielded(self, sid: str) -> int:
        """Windows ``sid`` yielded so far."""
        t = self._turns.get(sid)
        return t.windows_yielded if t is not None else 0

    def restart(self, sid: str) -> None:
        """The stream's window broke (a gap, a backstop skip): its run counts afresh, so
        that it releases its slot only after a complete window again."""
        t = self._turns.get(sid)
        if t is not None:
            t.run_len = 0

    def set_slots(self, slots: int) -> None:
        """How many streams may run at once (at least one). More slots are granted at
        once; fewer take effect at the holders' release points."""
        self.slots = max(1, slots)
        self._grant()

    # --- per sample ------------------------------------------------------------------

    def admit(self, sid: str, now: float) -> int:
        """The verdict for the next sample of ``sid``: :data:`ACCEPT`, :data:`YIELD` or
        :data:`YIELD_WINDOW`. Unknown streams are accepted (the engine refuses them)."""
        t = self._turns.get(sid)
        if t is None:
            return ACCEPT
        t.last_s = now
        if t.idle:  # back after an idle spell: queue again for a slot
            t.idle = False
            self.yielding += 1
            t.yielded = 0
            self._enqueue(sid, t)
            self._grant()
        if t.granted:
            t.granted = False
            t.running = True
            t.run_len = 0
        if t.running:
            at_release_point = (
                t.run_len >= WINDOW_SAMPLES and (t.run_len - WINDOW_SAMPLES) % t.hop == 0
            )
            if at_release_point and self._should_release(t):
                self._unhold(t)
                self.yielding += 1
                t.yielded = 0
                self._enqueue(sid, t)
                self._grant()
            if t.running:
                t.run_len += 1
                return ACCEPT
        first = t.yielded % WINDOW_SAMPLES == 0
        t.yielded += 1
        if first:
            t.windows_yielded += 1
            return YIELD_WINDOW
        return YIELD

    def tick(self, now: float) -> None:
        """Reclaim the slots and queue places of streams that stopped submitting (O(N);
        call a few times a second)."""
        released = False
        for t in self._turns.values():
            if t.idle or now - t.last_s < self.idle_release_s:
                continue
            if t.running or t.granted:
                self._unhold(t)
                released = True
            else:
                self.yielding -= 1
            t.idle = True  # its queue entry (if any) goes stale: tickets no longer match
            t.ticket = -1
        if released:
            self._grant()

    # --- internals -------------------------------------------------------------------

    def _should_release(self, t: _Turn) -> bool:
        if self.holding > self.slots and t.priority <= min(self._held_by_priority):
            return True
        head = self._head()
        if head is None:
            return False
        if head > t.priority:
            return True
        quantum = WINDOW_SAMPLES + self.run_windows * WINDOW_SAMPLES
        return head == t.priority and t.run_len >= quantum

    def _head(self) -> int | None:
        """Priority of the first valid waiter, dropping stale heap entries."""
        w = self._waiting
        while w:
            negp, ticket, sid = w[0]
            t = self._turns.get(sid)
            if t is not None and t.ticket == ticket and not (t.running or t.granted or t.idle):
                return -negp
            heapq.heappop(w)
        return None

    def _enqueue(self, sid: str, t: _Turn) -> None:
        self._ticket += 1
        t.ticket = self._ticket
        heapq.heappush(self._waiting, (-t.priority, t.ticket, sid))

    def _unhold(self, t: _Turn) -> None:
        t.running = False
        t.granted = False
        self.holding -= 1
        left = self._held_by_priority[t.priority] - 1
        if left:
            self._held_by_priority[t.priority] = left
        else:
            del self._held_by_priority[t.priority]

    def _grant(self) -> None:
        while self.holding < self.slots and self._head() is not None:
            _, _, sid = heapq.heappop(self._waiting)
            t = self._turns[sid]
            t.granted = True
            self.holding += 1
            self.yielding -= 1
            self._held_by_priority[t.priority] = self._held_by_priority.get(t.priority, 0) + 1
