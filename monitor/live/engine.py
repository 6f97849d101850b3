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
  order it updates each stream's :class:`~monitor.core.geometry.WindowRing` (a
  preallocated ``(24, D)`` ring on the device): one distance and one angle per
  sample, synchronised with the host once per batch, then classifies and delivers,
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
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import gc
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from ..config import EngineSettings
from ..core.geometry import ZERO_STEP_EPS, WindowRing
from ..media.colour import YUVPlanes
from ..media.decode_guard import rss_bytes
from ..metrics import StreamMetrics
from ..types import (
    SAMPLE_HZ,
    WINDOW_SAMPLES,
    RGBArray,
    Score,
    StreamScore,
    WindowClassifier,
    WindowFeatures,
    zero_step_angle_of,
)
from .shedding import (
    ACCEPT,
    MAX_DERIVED_BATCH,
    YIELD_WINDOW,
    BatchCost,
    Shedder,
    derive_sizes,
)

log = logging.getLogger("restrav.engine")


class RGBFrame(Protocol):
    """Anything that can give its RGB pixels (a :class:`~monitor.media.sources.SourceFrame`)."""

    def rgb(self) -> RGBArray:
        """RGB ``uint8`` ``(H, W, 3)``."""
        ...

    def planes(self) -> YUVPlanes | None:
        """Its 4:2:0 planes for conversion on the device, or None (use :meth:`rgb`)."""
        ...


class TensorEmbedder(Protocol):
    """What the engine needs from the model (:class:`~monitor.core.embed.Embedder` fits)."""

    @property
    def embedding_dim(self) -> int:
        """D."""
        ...

    @property
    def device(self) -> torch.device:
        """Where embeddings are returned."""
        ...

    def embed_tensor(self, frames: Sequence[RGBArray | YUVPlanes]) -> torch.Tensor:
        """``(N, D)`` float32 on :attr:`device`."""
        ...


@dataclass(frozen=True, slots=True)
class EngineSample:
    """One sample of a live stream, as the stream manager submits it.

    ``segment``/``k`` come from the live sampler (``k`` = position in the
    gap-free segment); ``time_s`` is the sample time on the source clock;
    ``arrival_s`` the ``time.monotonic()`` at which the frame arrived.
    """

    stream_id: str
    segment: int
    k: int
    time_s: float
    frame: RGBFrame
    arrival_s: float
    repeated: bool = False


ScoreCallback = Callable[[StreamScore], None]


class _Stop:
    pass


@dataclass
class _Unregister:
    stream_id: str


_STOP = _Stop()


@dataclass
class _Embedded:
    """A batch between the device step and the host step."""

    batch: Sequence[EngineSample | _Unregister]
    samples: list[EngineSample]
    z: torch.Tensor | None
    t_start: float
    t_conv: float
    t_embed: float
    device_s: float = 0.0

_TICK_S = 0.25
"""How often the event-loop side re-derives sizes and slots and reclaims idle slots."""


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


class _WindowState:
    """Worker side state of one stream: the device ring and the window's metadata."""

    def __init__(
        self,
        dim: int,
        device: torch.device,
        eps: float,
        hop: int,
        scored: Any,
        zero_step_angle_deg: float,
    ) -> None:
        self.ring = WindowRing(dim, device, eps, zero_step_angle_deg=zero_step_angle_deg)
        self.hop = hop
        self.segment = -1
        self.k = -1
        self.times: collections.deque[float] = collections.deque(maxlen=WINDOW_SAMPLES)
        self.arrivals: collections.deque[float] = collections.deque(maxlen=WINDOW_SAMPLES)
        self.repeats: collections.deque[bool] = collections.deque(maxlen=WINDOW_SAMPLES - 1)
        self.seq = 0
        self.scored = scored  # the stream's windows_scored child, or None


class Engine:
    """The device worker and every stream's window state (see the module docstring)."""

    def __init__(
        self,
        embedder: TensorEmbedder,
        classifier: WindowClassifier | None = None,
        settings: EngineSettings = EngineSettings(),
        metrics: StreamMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.embedder = embedder
        self.classifier = classifier
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.device = embedder.device
        self.dim = embedder.embedding_dim
        self.eps = settings.zero_step_eps if settings.zero_step_eps else ZERO_STEP_EPS
        # the windows' features are in the convention of the classifier that scores them
        self.zero_step_angle_deg = zero_step_angle_of(classifier)
        # one lock guards admission, the queue and the shedder; the worker waits on it
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._items: collections.deque[EngineSample | _Unregister | _Stop] = collections.deque()
        # device thread -> host thread: two batches at most (blocks, never drops)
        self._handoff: queue.Queue[_Embedded | _Stop] = queue.Queue(maxsize=2)
        self._queued = 0  # samples in _items (control items are not bounded: one per stream)
        self.batch_limit = settings.max_batch if settings.max_batch is not None else 16
        self.queue_limit = settings.queue_samples if settings.queue_samples is not None else 256
        self._admission: dict[str, _Admission] = {}
        self._states: dict[str, _WindowState] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepting = True
        self._batches = 0
        self._pool = (
            concurrent.futures.ThreadPoolExecutor(settings.convert_threads, "restrav-convert")
            if settings.convert_threads > 1
            else None
        )
        self.pixel_path = pixel_path(settings.pixel_path, self.device)
        self._convert = _convert_yuv if self.pixel_path == "yuv" else _convert_rgb
        self.cost = BatchCost()
        self.shedder = Shedder(settings.rotation_windows)
        self._shedding_on = settings.shedding == "rotate"
        self._limited = False  # slots limited since the queue first backed up
        self._probe = 0  # slot correction from the queue's depth (integral control)
        self._full_batches = 0  # batches at the limit since the last tick
        self._fallback_skips = 0  # backstop skips since the last tick
        self._idle_takes = 0  # batches the worker had to wait for, since _sat_start
        self._sat_start = 0.0
        self._sat_samples = 0
        self._sat_rate: float | None = None  # samples/s delivered while saturated
        self._next_tick = 0.0
        self.capacity_sps: float | None = None
        self.windows_scored = 0
        self.samples_embedded = 0
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
            self._resize()

    def unregister(self, stream_id: str) -> None:
        """Stop a stream: queued samples are discarded and its device ring is freed."""
        with self._lock:
            self._admission.pop(stream_id, None)
            self.shedder.remove(stream_id)
            # control items bypass the bound: at most one per stream and unregister call
            self._items.append(_Unregister(stream_id))
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
            if now >= self._next_tick:
                self._tick(now)
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
            if self._shedding_on:
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
                self._queued >= self.queue_limit
            ):
                a.skip_left = WINDOW_SAMPLES - 1
                a.frames_dropped += 1
                a.windows_skipped += 1
                self._fallback_skips += 1
                self.shedder.restart(sid)
                if a.m_dropped is not None:
                    a.m_dropped.inc()
                    a.m_skipped.inc()
                return False
            a.backlog += 1
            self._items.append(sample)
            self._queued += 1
            if self._queued >= self.batch_limit or self._queued == 1:
                self._ready.notify()  # the worker waits for a first sample or a full batch
        return True

    def _tick(self, now: float) -> None:
        """Re-derive sizes and slots, reclaim idle slots, set the gauges (under the lock;
        O(streams), a few times a second)."""
        self._next_tick = now + _TICK_S
        self._resize()
        self.shedder.tick(now)
        cap = self._capacity(now)
        self.capacity_sps = cap
        overloaded = self._fallback_skips > 0 or self._full_batches > 2
        if cap is not None and self._shedding_on and (overloaded or self._limited):
            if not self._limited:
                log.warning("engine overloaded: streams take turns (capacity about %.0f "
                            "samples/s)", cap)
            self._limited = True
            if self.shedder.yielding and self._queued < self.batch_limit // 2:
                self._probe = min(self._probe + 1, 64)  # the device has room: one more
            elif self._queued > 2 * self.batch_limit:
                self._probe = max(self._probe - 1, -64)
            base = math.floor(self.settings.target_utilisation * cap / SAMPLE_HZ)
            self.shedder.set_slots(base + self._probe)
        self._fallback_skips = 0
        self._full_batches = 0
        m = self.metrics
        if m is not None:
            m.streams_yielding.set(self.shedder.yielding)
            m.stream_slots.set(self.shedder.slots if self._limited else len(self._admission))
            m.capacity.set(cap or 0.0)
            m.batch_limit.set(self.batch_limit)
            m.queue_limit.set(self.queue_limit)
            m.queue_samples.set(self._queued)

    def _capacity(self, now: float) -> float | None:
        """Samples/s the worker sustains: the batch-cost fit, or less when the worker,
        saturated for a whole second (never waiting for work), delivered less: the fit
        counts only its busy time, not what it lost to the event loop and to other
        processes for the CPU (on two shared cores, up to a quarter at 4x overload)."""
        cap = self.cost.capacity(self.batch_limit)
        span = now - self._sat_start
        if span >= 1.0:
            done = self.samples_embedded - self._sat_samples
            if self._idle_takes == 0 and self._queued > 0 and done > 0:
                rate = done / span
                self._sat_rate = rate if self._sat_rate is None else (
                    0.7 * self._sat_rate + 0.3 * rate)
            elif self._idle_takes > 0 and self._sat_rate is not None and cap is not None:
                # the worker waited for work: what it delivered says nothing of its limit;
                # let the saturated figure drift back towards the fit
                self._sat_rate = min(cap, self._sat_rate * 1.02)
            self._sat_start, self._sat_samples, self._idle_takes = (
                now, self.samples_embedded, 0)
        if cap is not None and self._sat_rate is not None:
            return min(cap, self._sat_rate)
        return cap

    def _resize(self) -> None:
        """Derive the unset batch limit and queue bound (under the lock)."""
        s = self.settings
        if s.max_batch is not None and s.queue_samples is not None:
            return
        fit = self.cost.get()
        if fit is not None and fit[0] > 0.0:
            batch, queue = derive_sizes(fit[0], fit[1], len(self._admission), SAMPLE_HZ)
        else:  # slope unknown: a batch that fills every time may as well be larger
            batch = self.batch_limit
            if self._full_batches > 2:
                batch = min(MAX_DERIVED_BATCH, batch * 2)
            queue = derive_sizes(0.0, 0.0, len(self._admission), SAMPLE_HZ,
                                 min_batch=batch, max_batch=batch)[1]
        if s.max_batch is None:
            self.batch_limit = batch
        if s.queue_samples is None:
            self.queue_limit = max(queue, 4 * self.batch_limit)

    async def drain(self, timeout_s: float) -> bool:
        """Stop intake, finish queued samples, stop the worker. True if done in time."""
        with self._lock:
            self._accepting = False
            self._items.append(_STOP)
            self._ready.notify()
        t = self._thread
        if t is None:
            return True
        await asyncio.to_thread(t.join, max(0.0, timeout_s))
        # let callbacks scheduled by the last batch run
        await asyncio.sleep(0)
        if not t.is_alive():
            self.close()
        return not t.is_alive()

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
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    # --- worker side -----------------------------------------------------------------

    def _take(self) -> tuple[list[EngineSample | _Unregister], bool]:
        """The next batch (up to ``batch_limit`` samples; after an idle spell, waiting at
        most ``max_wait_ms`` for it to fill after the first item) and whether a stop was
        taken. One lock
        acquisition per wait: the samples are taken and their backlogs released in one
        pass."""
        max_wait = self.settings.max_wait_ms / 1000.0
        batch: list[EngineSample | _Unregister] = []
        with self._lock:
            idle = not self._items
            self._idle_takes += idle
            while not self._items:
                self._ready.wait()
            # wait for a batch to fill only after an idle spell: back to back, the next
            # batch filled while this one ran, and waiting would idle a saturated device
            # (10 ms of every 40 ms batch at capacity)
            deadline = time.monotonic() + (max_wait if idle else 0.0)
            while self._queued < self.batch_limit and not isinstance(self._items[-1], _Stop):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._ready.wait(left)
            limit = self.batch_limit
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
                self._full_batches += 1
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
                    e = self._embed(batch)
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
                self._score(e)
            # device-worker boundary (host side): as in _run
            except Exception as exc:
                log.exception("device worker: scoring a batch of %d failed", len(e.samples))
                self.error = exc
            n = len(e.samples)
            if n:
                # the two steps overlap: a batch costs the slower of the two
                busy = max(e.device_s, time.monotonic() - t0)
                with self._lock:
                    self.cost.update(n, busy)

    def _state(self, sid: str) -> _WindowState | None:
        st = self._states.get(sid)
        if st is None:
            with self._lock:
                a = self._admission.get(sid)
            if a is None:
                return None
            m = self.metrics
            st = _WindowState(self.dim, self.device, self.eps, a.hop,
                              m.windows_scored.labels(sid) if m is not None else None,
                              self.zero_step_angle_deg)
            self._states[sid] = st
        return st

    def process(self, batch: Sequence[EngineSample | _Unregister]) -> list[StreamScore]:
        """Embed and score one micro-batch (both steps of the worker in turn; callable
        directly in tests and benchmarks without the threads). Returns the scores it
        delivered."""
        return self._score(self._embed(batch))

    def _embed(self, batch: Sequence[EngineSample | _Unregister]) -> _Embedded:
        """The device step: convert the frames and run the forward pass."""
        m = self.metrics
        t_start = time.monotonic()
        samples: list[EngineSample] = []
        rgbs: list[RGBArray | YUVPlanes] = []
        todo = [item for item in batch if isinstance(item, EngineSample)]
        # one conversion per distinct frame (repeated samples share one; a PyAV frame must
        # not be converted by two threads at once), in parallel across frames
        distinct = list({id(s.frame): s.frame for s in todo}.values())
        rgb_of = dict(zip((id(f) for f in distinct), self._convert_all(distinct)))
        converted = [rgb_of[id(s.frame)] for s in todo]
        for item, rgb in zip(todo, converted):
            if rgb is None:
                log.warning("stream %s: frame conversion failed", item.stream_id)
                if m is not None:
                    m.frames_dropped.labels(item.stream_id, "convert_error").inc()
                continue
            samples.append(item)
            rgbs.append(rgb)
        t_conv = time.monotonic()
        if not samples:
            return _Embedded(batch, samples, None, t_start, t_conv, t_conv)
        z = self.embedder.embed_tensor(rgbs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t_embed = time.monotonic()
        self.samples_embedded += len(samples)
        return _Embedded(batch, samples, z, t_start, t_conv, t_embed)

    def _convert_all(self, frames: list[RGBFrame]) -> list[RGBArray | YUVPlanes | None]:
        """Convert ``frames`` in order: in one contiguous chunk per conversion thread, so
        that a batch costs one pool round trip per thread, not one per frame (about 80 us
        each: more than taking the planes of a GPU frame)."""
        convert = self._convert
        if self._pool is None or len(frames) < 2:
            return [convert(f) for f in frames]
        k = min(self.settings.convert_threads, len(frames))
        size = -(-len(frames) // k)
        chunks = [frames[i : i + size] for i in range(0, len(frames), size)]
        out: list[RGBArray | YUVPlanes | None] = []
        for part in self._pool.map(lambda c: [convert(f) for f in c], chunks):
            out.extend(part)
        return out

    def _score(self, e: _Embedded) -> list[StreamScore]:
        """The host step: ring updates, features, classifier, metrics, delivery (in
        batch order; it owns the window states)."""
        m = self.metrics
        for item in e.batch:
            if isinstance(item, _Unregister):
                self._states.pop(item.stream_id, None)
        samples, z = e.samples, e.z
        if z is None:
            return []
        t_start, t_conv, t_embed = e.t_start, e.t_conv, e.t_embed

        # geometry: push every sample on the device, synchronise once, then commit in order
        states: list[_WindowState | None] = []
        pushed: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        for i, smp in enumerate(samples):
            st = self._state(smp.stream_id)
            states.append(st)
            if st is None:
                pushed.append(None)
                continue
            restart = not (smp.segment == st.segment and smp.k == st.k + 1)
            st.segment, st.k = smp.segment, smp.k
            pushed.append(st.ring.push(z[i], restart=restart))
        scalars = [p for p in pushed if p is not None]
        host = (
            torch.stack([torch.stack(p) for p in scalars]).cpu().numpy()
            if scalars
            else np.zeros((0, 2))
        )
        ready: list[tuple[_WindowState, EngineSample, WindowFeatures, int, float]] = []
        j = 0
        for smp, st, p in zip(samples, states, pushed):
            if st is None:
                continue
            if p is None:
                st.ring.commit(None, None)
                st.times.clear()
                st.arrivals.clear()
                st.repeats.clear()
            else:
                st.ring.commit(float(host[j, 0]), float(host[j, 1]))
                j += 1
                st.repeats.append(smp.repeated)
            st.times.append(smp.time_s)
            st.arrivals.append(smp.arrival_s)
            ring = st.ring
            if ring.ready and (ring.samples - WINDOW_SAMPLES) % st.hop == 0:
                wf = ring.features(start_s=st.times[0])
                assert wf is not None
                ready.append((st, smp, wf, sum(st.repeats), st.arrivals[0]))
        t_geom = time.monotonic()

        probs: list[float | None] = [None] * len(ready)
        threshold: float | None = None
        if ready and self.classifier is not None:
            feats = np.stack([r[2].features for r in ready])
            probs = [float(p) for p in self.classifier.predict_proba(feats)]
            threshold = float(self.classifier.threshold)
        t_cls = time.monotonic()

        now = time.time()
        wall = now - time.monotonic()  # monotonic -> Unix time
        out: list[StreamScore] = []
        for (st, smp, wf, reps, first_arrival), prob in zip(ready, probs):
            score = Score(
                window=wf, p_ai=prob, threshold=threshold, source=smp.stream_id,
                repeated_samples=reps,
            )
            out.append(
                StreamScore(
                    stream_id=smp.stream_id,
                    seq=st.seq,
                    segment=smp.segment,
                    start_s=wf.start_s,
                    end_s=smp.time_s,
                    score=score,
                    arrival_s=smp.arrival_s,
                    scored_at=now,
                    wall_start=first_arrival + wall,
                    wall_end=smp.arrival_s + wall,
                )
            )
            st.seq += 1
        self.windows_scored += len(out)
        self._batches += 1
        if m is not None:
            m.batch_size.observe(len(samples))
            stage = m.stage_latency
            queued = stage.labels("queue")
            for smp in samples:
                queued.observe(max(0.0, t_start - smp.arrival_s))
            stage.labels("convert").observe(t_conv - t_start)
            stage.labels("embed").observe(t_embed - t_conv)
            stage.labels("geometry").observe(t_geom - t_embed)
            if ready:
                stage.labels("classify").observe(t_cls - t_geom)
            for st, *_ in ready:
                if st.scored is not None:
                    st.scored.inc()
            if self._batches % 50 == 1:
                self._record_memory(m)
        self._deliver(out)
        return out

    def _deliver(self, scores: list[StreamScore]) -> None:
        """Hand a batch's scores to their callbacks: on the loop, in one wake-up per
        batch (one self-pipe write, not one per score)."""
        if not scores:
            return
        with self._lock:
            calls = [(a.callback, sc) for sc in scores
                     if (a := self._admission.get(sc.stream_id)) is not None]
        if self._loop is None:
            _dispatch(calls)
            return
        try:
            self._loop.call_soon_threadsafe(_dispatch, calls)
        except RuntimeError:  # the loop closed under us at shutdown
            return

    def _record_memory(self, m: StreamMetrics) -> None:
        dev = str(self.device)
        if self.device.type == "cuda":
            m.device_memory.labels(dev, "allocated").set(torch.cuda.memory_allocated(self.device))
            m.device_memory.labels(dev, "reserved").set(torch.cuda.memory_reserved(self.device))
        else:
            m.device_memory.labels(dev, "rss").set(rss_bytes())


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


def _dispatch(calls: list[tuple[ScoreCallback, StreamScore]]) -> None:
    """Run a batch's score callbacks (on the event loop); one that raises is logged and
    the others still run."""
    for callback, sc in calls:
        # callback boundary: a failing callback of one stream must not lose the batch's
        # other scores (one loop callback per score isolated them, as this does)
        try:
            callback(sc)
        except Exception:
            log.exception("score callback of stream %s failed", sc.stream_id)


def _convert_rgb(frame: RGBFrame) -> RGBArray | YUVPlanes | None:
    """RGB pixels of a frame; None when the frame cannot be converted."""
    try:
        return frame.rgb()
    except Exception:  # one bad frame must not cost the batch; counted by the caller
        log.debug("conversion failed", exc_info=True)
        return None


def _convert_yuv(frame: RGBFrame) -> RGBArray | YUVPlanes | None:
    """A frame's planes (converted on the device later), else its RGB pixels; None when
    the frame cannot be converted."""
    try:
        return frame.planes() or frame.rgb()
    except Exception:  # one bad frame must not cost the batch; counted by the caller
        log.debug("conversion failed", exc_info=True)
        return None


def pixel_path(setting: str, device: torch.device) -> str:
    """``yuv`` (4:2:0 planes uploaded, converted and resized on the device) or ``rgb``
    (RGB made on the CPU by FFmpeg). ``auto`` takes ``yuv`` on CUDA, where it moves half
    the bytes and frees the CPU, and ``rgb`` on the CPU, where swscale's SIMD
    conversion is the faster of the two. Both give the same pixels (monitor.media.colour)."""
    if setting == "auto":
        return "yuv" if device.type == "cuda" else "rgb"
    return setting

