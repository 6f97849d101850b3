"""The incremental streaming engine (SPEC section 8): one device worker for all streams.

Contract:

* Streams :meth:`Engine.register` with a callback; the event loop hands in
  samples with :meth:`Engine.submit` (non-blocking). Each sample is embedded
  once. One worker, two threads: the device thread owns the model; it takes
  samples from a bounded queue and micro-batches them across streams (``max_batch``
  frames; after an idle spell waiting at most ``max_wait_ms`` for a batch to fill),
  converts the sampled frames to RGB on the CPU or, with ``pixel_path="yuv"``, hands
  their 4:2:0 planes to the device for conversion (:mod:`monitor.media.colour`) and runs
  one forward pass per batch. The host thread owns the window states: in batch
  order it updates the streams' trajectories (one
  :class:`~monitor.core.geometry.StepTable` on the device, one embedding and one step
  per stream, updated per batch): one distance and one angle per sample, synchronised
  with the host once per batch, then classifies and delivers,
  while the device thread runs the next forward pass.
* A window is 24 consecutive samples of one segment (``k`` increasing by one);
  any discontinuity (a gap, a skipped or failed sample) starts a new window.
  A window is scored when full and then every ``hop`` samples; its 21 features
  come from its last 23 distances and 22 angles and equal
  :func:`~monitor.core.geometry.window_features` of the same 24 embeddings.
* Overload is shed by whole streams (:mod:`monitor.live.shedding`): once the queue
  backs up, at most ``slots`` streams run at once (from the measured batch cost and
  11.5 Hz per stream); the others yield whole windows in fair rotation (or by the
  priority given to :meth:`Engine.register`), so that every accepted sample ends in
  a scored window (``frames_dropped{reason="yield"}``, one
  ``windows_skipped{reason="yield"}`` per 24 samples yielded). As a backstop,
  when a stream still has ``max_backlog_per_stream`` samples queued, or the queue
  is full, the stream skips a whole window: the sample and the next 23 of that
  stream are dropped (``frames_dropped{reason="overload"}``, one
  ``windows_skipped{reason="overload"}``), and the window restarts after them.
  Samples inside a window are never dropped alone.
* Sizes: ``max_batch`` and ``queue_samples`` left unset (None) are derived from the
  measured batch cost and the number of streams
  (:func:`~monitor.live.shedding.derive_sizes`), re-derived a few times a second.
* Cost per sample, on the event loop and on the worker, does not grow with the
  number of streams: counts are plain fields (:meth:`Engine.counts`), metric children
  are looked up once per stream, the worker takes a whole batch under one lock
  acquisition, and the scores of a batch reach the loop in one wake-up.
* Scores go to the stream's callback as :class:`StreamScore`, on the event
  loop given to :meth:`Engine.start` (or on the worker thread without one).
* :meth:`Engine.drain` stops intake, finishes the queued batches and stops the
  worker, within a deadline.

Parts: the batch step (embed, then score) is :mod:`monitor.live.batch`, the sizes and
slots :mod:`monitor.live.sizing`, the rotation :mod:`monitor.live.shedding`. This
module is kept whole: admission, the queue and the two threads share one lock.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import EngineSettings
from ..metrics import StreamMetrics
from ..types import (
    WINDOW_SAMPLES,
    StreamScore,
    WindowClassifier,
)
from .batch import (
    BatchScorer,
    Embedded,
    EngineSample,
    Unregister,
)
from .conversion import TensorEmbedder
from .shedding import (
    ACCEPT,
    YIELD_WINDOW,
    Shedder,
)
from .sizing import EngineSizing

log = logging.getLogger("restrav.engine")


ScoreCallback = Callable[[StreamScore], None]


class _Stop:
    pass


_STOP = _Stop()


@dataclass(frozen=True, slots=True)
class StreamCounts:
    """One stream's engine counts, kept in plain fields (reading them costs O(1))."""

    windows_skipped: int
    windows_yielded: int
    frames_dropped: int
    yielding: bool
    priority: int


class _Admission:
    """Event-loop side bookkeeping of one stream: backlog, window skipping, counts and
    the stream's metric children (looked up once, not per sample)."""

    __slots__ = ("backlog", "callback", "frames_dropped", "hop", "last_k", "last_segment",
                 "m_dropped", "m_skipped", "m_yield_dropped", "m_yield_skipped",
                 "m_yielding", "priority", "skip_left", "windows_skipped",
                 "windows_yielded", "yielding")

    def __init__(self, callback: ScoreCallback, hop: int, priority: int,
                 sid: str, m: StreamMetrics | None) -> None:
        self.callback = callback
        self.hop = hop
        self.priority = priority
        self.backlog = 0
        self.skip_left = 0
        self.windows_skipped = 0  # overload and yield
        self.windows_yielded = 0
        self.frames_dropped = 0
        self.yielding = False
        self.last_segment = -1
        self.last_k = -1
        self.m_dropped: Any = None
        self.m_skipped: Any = None
        self.m_yield_dropped: Any = None
        self.m_yield_skipped: Any = None
        self.m_yielding: Any = None
        if m is not None:
            self.m_dropped = m.frames_dropped.labels(sid, "overload")
            self.m_skipped = m.windows_skipped.labels(sid, "overload")
            self.m_yield_dropped = m.frames_dropped.labels(sid, "yield")
            self.m_yield_skipped = m.windows_skipped.labels(sid, "yield")
            self.m_yielding = m.stream_yielding.labels(sid)
            self.m_yielding.set(0.0)


class Engine:
    """Admission, the engine queue and the device worker's two threads (see the module
    docstring); the batch step is :class:`~monitor.live.batch.BatchScorer`, the sizes
    :class:`~monitor.live.sizing.EngineSizing`.

    Kept whole: what remains here is one lock's protocol (admission, the queue, the
    worker's take, the hand-off between the threads), which reads best in one place."""

    def __init__(
        self,
        embedder: TensorEmbedder,
        classifier: WindowClassifier | None = None,
        settings: EngineSettings = EngineSettings(),
        metrics: StreamMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.batches = BatchScorer(embedder, classifier, settings, metrics, self._hop_of)
        self.device = self.batches.device
        # one lock guards admission, the queue and the shedder; the worker waits on it
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._items: collections.deque[EngineSample | Unregister | _Stop] = collections.deque()
        # device thread -> host thread: two batches at most (blocks, never drops)
        self._handoff: queue.Queue[Embedded | _Stop] = queue.Queue(maxsize=2)
        self._queued = 0  # samples in _items (control items are not bounded: one per stream)
        self._admission: dict[str, _Admission] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batch_scope: Callable[[], contextlib.AbstractContextManager[object]] = (
            contextlib.nullcontext)
        """Entered around each batch's score callbacks (on the loop): the stream manager
        holds what they publish until the batch's last one has run."""
        self._accepting = True
        self.shedder = Shedder(settings.rotation_windows)
        self.sizing = EngineSizing(settings, self.shedder, metrics)
        self.error: BaseException | None = None

    # --- event-loop side -------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start the worker thread; callbacks run on ``loop`` (or the worker without one)."""
        if self._thread is not None:
            raise RuntimeError("engine already started")
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="restrav-device", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        """True while the worker thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def register(
        self, stream_id: str, callback: ScoreCallback, hop: int | None = None, priority: int = 0
    ) -> None:
        """Start accepting samples of ``stream_id``; its scores go to ``callback``. Under
        overload streams of higher ``priority`` keep running while lower ones yield."""
        h = hop or self.settings.hop
        with self._lock:
            self._admission[stream_id] = _Admission(callback, h, priority, stream_id,
                                                    self.metrics)
            self.shedder.add(stream_id, priority, h, self.clock())
            self.sizing.resize(len(self._admission))

    def unregister(self, stream_id: str) -> None:
        """Stop a stream: queued samples are discarded and its device ring is freed."""
        with self._lock:
            self._admission.pop(stream_id, None)
            self.shedder.remove(stream_id)
            # control items bypass the bound: at most one per stream and unregister call
            self._items.append(Unregister(stream_id))
            self._ready.notify()

    def backlog(self, stream_id: str) -> int:
        """Samples of ``stream_id`` waiting for the device."""
        with self._lock:
            a = self._admission.get(stream_id)
            return a.backlog if a else 0

    def counts(self, stream_id: str) -> StreamCounts | None:
        """The stream's skip/yield counts (plain fields; O(1)), or None if unknown."""
        with self._lock:
            a = self._admission.get(stream_id)
            if a is None:
                return None
            return StreamCounts(a.windows_skipped, a.windows_yielded, a.frames_dropped,
                                a.yielding, a.priority)

    def submit(self, sample: EngineSample) -> bool:
        """Queue one sample; False when it was dropped (yield, overload, shutdown, unknown
        stream). O(1): nothing here grows with the number of streams."""
        sid = sample.stream_id
        now = self.clock()
        with self._lock:
            z = self.sizing
            if now >= z.next_tick:
                z.tick(now, self._queued, len(self._admission), self.batches.samples_embedded)
            a = self._admission.get(sid)
            if a is None or not self._accepting:
                if self.metrics is not None:
                    self.metrics.frames_dropped.labels(sid, "shutdown").inc()
                return False
            if a.skip_left > 0:
                a.skip_left -= 1
                a.frames_dropped += 1
                if a.m_dropped is not None:
                    a.m_dropped.inc()
                return False
            if sample.segment != a.last_segment or sample.k != a.last_k + 1:
                self.shedder.restart(sid)  # the stream's window broke: its run restarts
            a.last_segment, a.last_k = sample.segment, sample.k
            if z.shedding_on:
                verdict = self.shedder.admit(sid, now)
                if verdict != ACCEPT:
                    a.frames_dropped += 1
                    if not a.yielding:
                        a.yielding = True
                        if a.m_yielding is not None:
                            a.m_yielding.set(1.0)
                    if a.m_yield_dropped is not None:
                        a.m_yield_dropped.inc()
                    if verdict == YIELD_WINDOW:
                        a.windows_yielded += 1
                        a.windows_skipped += 1
                        if a.m_yield_skipped is not None:
                            a.m_yield_skipped.inc()
                    return False
                if a.yielding:
                    a.yielding = False
                    if a.m_yielding is not None:
                        a.m_yielding.set(0.0)
            if a.backlog >= self.settings.max_backlog_per_stream or (
                self._queued >= z.queue_limit
            ):
                a.skip_left = WINDOW_SAMPLES - 1
                a.frames_dropped += 1
                a.windows_skipped += 1
                z.fallback_skips += 1
                self.shedder.restart(sid)
                if a.m_dropped is not None:
                    a.m_dropped.inc()
                    a.m_skipped.inc()
                return False
            a.backlog += 1
            self._items.append(sample)
            self._queued += 1
            if self._queued >= z.batch_limit or self._queued == 1:
                self._ready.notify()  # the worker waits for a first sample or a full batch
        return True

    async def drain(self, timeout_s: float) -> bool:
        """Stop intake, finish queued samples, stop the worker. True if done in time.

        At the deadline the samples still queued are dropped (counted
        ``frames_dropped{reason="shutdown"}``): the worker then stops after the batch it
        is computing, which cannot be interrupted; :attr:`running` says whether it is
        still in that batch (a process must not exit its interpreter under it: the
        thread would be killed inside native code, see ``workers/serve_cmd.py``)."""
        with self._lock:
            self._accepting = False
            self._items.append(_STOP)
            self._ready.notify()
        t = self._thread
        if t is None:
            return True
        await asyncio.to_thread(t.join, max(0.0, timeout_s))
        if t.is_alive():
            dropped = self._abandon_queue()
            log.warning("engine drain deadline passed: %d queued samples dropped; the batch "
                        "in flight is not waited for", dropped)
        # let callbacks scheduled by the last batch run
        await asyncio.sleep(0)
        if not t.is_alive():
            self.close()
        return not t.is_alive()

    def _abandon_queue(self) -> int:
        """Drop every queued sample (the stop item stays): the worker stops after its
        current batch. Returns the samples dropped."""
        with self._lock:
            kept: collections.deque[EngineSample | Unregister | _Stop] = collections.deque()
            dropped = 0
            for item in self._items:
                if isinstance(item, EngineSample):
                    dropped += 1
                    a = self._admission.get(item.stream_id)
                    if a is not None:
                        a.frames_dropped += 1
                        a.backlog = max(0, a.backlog - 1)
                    if self.metrics is not None:
                        self.metrics.frames_dropped.labels(item.stream_id, "shutdown").inc()
                else:
                    kept.append(item)
            self._items.clear()
            self._items.extend(kept)
            self._queued = 0
            self._ready.notify()
        return dropped

    def stop(self, timeout_s: float = 5.0) -> None:
        """Synchronous stop (no event loop): finish queued samples and join the worker."""
        with self._lock:
            self._accepting = False
            self._items.append(_STOP)
            self._ready.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.close()

    def close(self) -> None:
        """Release the conversion threads (after the worker stopped)."""
        self.batches.close()

    # --- worker side -----------------------------------------------------------------

    def _take(self) -> tuple[list[EngineSample | Unregister], bool]:
        """The next batch (up to ``batch_limit`` samples; after an idle spell, waiting at
        most ``max_wait_ms`` for it to fill after the first item) and whether a stop was
        taken. One lock
        acquisition per wait: the samples are taken and their backlogs released in one
        pass."""
        max_wait = self.settings.max_wait_ms / 1000.0
        batch: list[EngineSample | Unregister] = []
        with self._lock:
            idle = not self._items
            self.sizing.idle_takes += idle
            while not self._items:
                self._ready.wait()
            # wait for a batch to fill only after an idle spell: back to back, the next
            # batch filled while this one ran, and waiting would idle a saturated device
            # (10 ms of every 40 ms batch at capacity)
            deadline = time.monotonic() + (max_wait if idle else 0.0)
            while (self._queued < self.sizing.batch_limit
                   and not isinstance(self._items[-1], _Stop)):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._ready.wait(left)
            limit = self.sizing.batch_limit
            n = 0
            items = self._items
            while items and n < limit:
                item = items[0]
                if isinstance(item, _Stop):
                    if n == 0 and not batch:
                        items.popleft()
                        return batch, True
                    break
                items.popleft()
                batch.append(item)
                if isinstance(item, EngineSample):
                    n += 1
                    a = self._admission.get(item.stream_id)
                    if a is not None and a.backlog > 0:
                        a.backlog -= 1
            self._queued -= n
            if n >= limit:
                self.sizing.full_batches += 1
        return batch, False

    def _run(self) -> None:
        """The device thread: take a batch, convert, forward, hand it to the host thread.
        Its next forward pass overlaps the host work of the previous batch (the bounded
        hand-off blocks when the host thread is two batches behind: no drops there; the
        engine queue's policy applies upstream)."""
        host = threading.Thread(target=self._run_host, name="restrav-host", daemon=True)
        host.start()
        try:
            while True:
                batch, stop = self._take()
                if stop:
                    break
                t0 = time.monotonic()
                try:
                    e = self.batches.embed(batch)
                # device-worker boundary: a bug in one batch is logged and kept in .error
                # for inspection; the batch's streams are released and the worker goes on
                except Exception as exc:
                    log.exception("device worker: batch of %d failed", len(batch))
                    self.error = exc
                    continue
                e.device_s = time.monotonic() - t0
                self._handoff.put(e)
        finally:
            self._handoff.put(_STOP)
            host.join()

    def _run_host(self) -> None:
        """The host thread: score the embedded batches in order."""
        while True:
            e = self._handoff.get()
            if isinstance(e, _Stop):
                return
            t0 = time.monotonic()
            try:
                self._deliver(self.batches.score(e))
            # device-worker boundary (host side): as in _run
            except Exception as exc:
                log.exception("device worker: scoring a batch of %d failed", len(e.samples))
                self.error = exc
            n = len(e.samples)
            if n:
                # the two steps overlap: a batch costs the slower of the two
                busy = max(e.device_s, time.monotonic() - t0)
                with self._lock:
                    self.sizing.cost.update(n, busy)

    def process(self, batch: Sequence[EngineSample | Unregister]) -> list[StreamScore]:
        """Embed and score one micro-batch (both steps of the worker in turn; callable
        directly in tests and benchmarks without the threads). Returns the scores it
        delivered."""
        out = self.batches.score(self.batches.embed(batch))
        self._deliver(out)
        return out

    def _hop_of(self, sid: str) -> int | None:
        """The stream's hop, or None once it is unregistered (for the batch step)."""
        with self._lock:
            a = self._admission.get(sid)
        return None if a is None else a.hop

    @property
    def samples_embedded(self) -> int:
        """Samples embedded since start (all streams)."""
        return self.batches.samples_embedded

    @property
    def windows_scored(self) -> int:
        """Windows scored since start (all streams)."""
        return self.batches.windows_scored

    @property
    def batch_limit(self) -> int:
        """Samples per device batch at most (set, or derived from the batch cost)."""
        return self.sizing.batch_limit

    @property
    def queue_limit(self) -> int:
        """Samples the engine queue holds at most (set, or derived)."""
        return self.sizing.queue_limit

    @property
    def capacity_sps(self) -> float | None:
        """Samples/s the worker sustains, once measured."""
        return self.sizing.capacity_sps

    @property
    def pixel_path(self) -> str:
        """``rgb`` or ``yuv``: where sampled frames are converted."""
        return self.batches.pixel_path

    def _deliver(self, scores: list[StreamScore]) -> None:
        """Hand a batch's scores to their callbacks: on the loop, in one wake-up per
        batch (one self-pipe write, not one per score)."""
        if not scores:
            return
        with self._lock:
            calls = [(a.callback, sc) for sc in scores
                     if (a := self._admission.get(sc.stream_id)) is not None]
        if self._loop is None:
            _dispatch(calls, self.batch_scope, self.metrics)
            return
        try:
            self._loop.call_soon_threadsafe(_dispatch, calls, self.batch_scope, self.metrics)
        except RuntimeError:  # the loop closed under us at shutdown
            return

GIL_SWITCH_INTERVAL_S = 0.001
"""The interpreter switch interval ``serve`` sets (Python's default is 5 ms): a worker
thread coming back from the device (or a sleep) waits up to one interval for the GIL
while the event loop runs; at 4x overload on two cores that cost the worker about a
tenth of its throughput (BENCHMARKS.md, bench_overload)."""


def freeze_startup_heap() -> int:
    """Collect once, then move every object alive now to the collector's permanent
    generation (:func:`gc.freeze`): the model, torch and the web app, allocated once at
    start-up, are then never scanned again, and full collections take milliseconds
    instead of 100-200 ms. Call once, after start-up. Returns the objects frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def _dispatch(calls: list[tuple[ScoreCallback, StreamScore]],
              scope: Callable[[], contextlib.AbstractContextManager[object]]
              = contextlib.nullcontext, metrics: StreamMetrics | None = None) -> None:
    """Run a batch's score callbacks (on the event loop) within ``scope()``; one that
    raises is logged, counted (``restrav_stream_windows_skipped_total{reason=
    "callback_failed"}``) and the others still run."""
    with scope():
        for callback, sc in calls:
            # callback boundary: a failing callback of one stream must not lose the batch's
            # other scores (one loop callback per score isolated them, as this does)
            try:
                callback(sc)
            except Exception:
                log.exception("score callback of stream %s failed", sc.stream_id)
                if metrics is not None:
                    metrics.windows_skipped.labels(sc.stream_id, "callback_failed").inc()
