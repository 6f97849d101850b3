"""The incremental streaming engine (SPEC section 8): one device worker for all streams.

Contract:

* Streams :meth:`Engine.register` with a callback; the event loop hands in
  samples with :meth:`Engine.submit` (non-blocking). Each sample is embedded
  once. One worker thread owns the model and the device: it takes samples from
  a bounded queue and micro-batches them across streams (``max_batch`` frames,
  waiting at most ``max_wait_ms`` for a batch to fill), converts the sampled
  frames to RGB on the CPU or, with ``pixel_path="yuv"``, hands their 4:2:0 planes
  to the device for conversion (:mod:`monitor.colour`), runs one forward pass per
  batch and updates each stream's
  :class:`~monitor.geometry.WindowRing` (a preallocated ``(24, D)`` ring on the
  device): one distance and one angle per sample, synchronised with the host
  once per batch.
* A window is 24 consecutive samples of one segment (``k`` increasing by one);
  any discontinuity (a gap, a skipped or failed sample) starts a new window.
  A window is scored when full and then every ``hop`` samples; its 21 features
  come from its last 23 distances and 22 angles and equal
  :func:`~monitor.geometry.window_features` of the same 24 embeddings.
* Overload: when a stream has ``max_backlog_per_stream`` samples queued, or
  the queue is full, the stream skips a whole window: the sample and the next
  23 of that stream are dropped (``frames_dropped{reason="overload"}``, one
  ``windows_skipped{reason="overload"}``), and the window restarts after them.
  Samples inside a window are never dropped alone.
* Scores go to the stream's callback as :class:`StreamScore`, on the event
  loop given to :meth:`Engine.start` (or on the worker thread without one).
* :meth:`Engine.drain` stops intake, finishes the queued batches and stops the
  worker, within a deadline.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from .colour import YUVPlanes
from .config import EngineSettings
from .decode_guard import rss_bytes
from .geometry import ZERO_STEP_EPS, WindowRing
from .metrics import StreamMetrics
from .types import (
    WINDOW_SAMPLES,
    RGBArray,
    Score,
    StreamScore,
    WindowClassifier,
    WindowFeatures,
    zero_step_angle_of,
)

log = logging.getLogger("restrav.engine")


class RGBFrame(Protocol):
    """Anything that can give its RGB pixels (a :class:`~monitor.sources.SourceFrame`)."""

    def rgb(self) -> RGBArray:
        """RGB ``uint8`` ``(H, W, 3)``."""
        ...

    def planes(self) -> YUVPlanes | None:
        """Its 4:2:0 planes for conversion on the device, or None (use :meth:`rgb`)."""
        ...


class TensorEmbedder(Protocol):
    """What the engine needs from the model (:class:`~monitor.embed.Embedder` fits)."""

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


class _Admission:
    """Event-loop side bookkeeping of one stream: backlog and window skipping."""

    __slots__ = ("backlog", "callback", "hop", "skip_left")

    def __init__(self, callback: ScoreCallback, hop: int) -> None:
        self.callback = callback
        self.hop = hop
        self.backlog = 0
        self.skip_left = 0


class _WindowState:
    """Worker side state of one stream: the device ring and the window's metadata."""

    def __init__(
        self, dim: int, device: torch.device, eps: float, hop: int, zero_step_angle_deg: float
    ) -> None:
        self.ring = WindowRing(dim, device, eps, zero_step_angle_deg=zero_step_angle_deg)
        self.hop = hop
        self.segment = -1
        self.k = -1
        self.times: collections.deque[float] = collections.deque(maxlen=WINDOW_SAMPLES)
        self.arrivals: collections.deque[float] = collections.deque(maxlen=WINDOW_SAMPLES)
        self.repeats: collections.deque[bool] = collections.deque(maxlen=WINDOW_SAMPLES - 1)
        self.seq = 0


class Engine:
    """The device worker and every stream's window state (see the module docstring)."""

    def __init__(
        self,
        embedder: TensorEmbedder,
        classifier: WindowClassifier | None = None,
        settings: EngineSettings = EngineSettings(),
        metrics: StreamMetrics | None = None,
    ) -> None:
        self.embedder = embedder
        self.classifier = classifier
        self.settings = settings
        self.metrics = metrics
        self.device = embedder.device
        self.dim = embedder.embedding_dim
        self.eps = settings.zero_step_eps if settings.zero_step_eps else ZERO_STEP_EPS
        # the windows' features are in the convention of the classifier that scores them
        self.zero_step_angle_deg = zero_step_angle_of(classifier)
        self._queue: queue.Queue[EngineSample | _Unregister | _Stop] = queue.Queue(
            maxsize=settings.queue_samples
        )
        self._lock = threading.Lock()
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

    def register(self, stream_id: str, callback: ScoreCallback, hop: int | None = None) -> None:
        """Start accepting samples of ``stream_id``; its scores go to ``callback``."""
        with self._lock:
            self._admission[stream_id] = _Admission(callback, hop or self.settings.hop)

    def unregister(self, stream_id: str) -> None:
        """Stop a stream: queued samples are discarded and its device ring is freed."""
        with self._lock:
            self._admission.pop(stream_id, None)
        try:
            self._queue.put(_Unregister(stream_id), timeout=1.0)
        except queue.Full:
            log.warning("engine queue full: state of %s freed later", stream_id)

    def backlog(self, stream_id: str) -> int:
        """Samples of ``stream_id`` waiting for the device."""
        with self._lock:
            a = self._admission.get(stream_id)
            return a.backlog if a else 0

    def submit(self, sample: EngineSample) -> bool:
        """Queue one sample; False when it was dropped (overload, shutdown, unknown stream)."""
        m = self.metrics
        sid = sample.stream_id
        with self._lock:
            a = self._admission.get(sid)
            if a is None or not self._accepting:
                if m is not None:
                    m.frames_dropped.labels(sid, "shutdown").inc()
                return False
            if a.skip_left > 0:
                a.skip_left -= 1
                if m is not None:
                    m.frames_dropped.labels(sid, "overload").inc()
                return False
            overloaded = a.backlog >= self.settings.max_backlog_per_stream
            if not overloaded:
                try:
                    self._queue.put_nowait(sample)
                except queue.Full:
                    overloaded = True
            if overloaded:
                a.skip_left = WINDOW_SAMPLES - 1
                if m is not None:
                    m.frames_dropped.labels(sid, "overload").inc()
                    m.windows_skipped.labels(sid, "overload").inc()
                return False
            a.backlog += 1
        if m is not None:
            m.queue_samples.set(self._queue.qsize())
        return True

    async def drain(self, timeout_s: float) -> bool:
        """Stop intake, finish queued samples, stop the worker. True if done in time."""
        with self._lock:
            self._accepting = False
        t = self._thread
        if t is None:
            return True
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._queue.put(_STOP, timeout=0.05)
                break
            except queue.Full:
                if time.monotonic() > deadline:
                    return False
                await asyncio.sleep(0.05)
        remaining = max(0.0, deadline - time.monotonic())
        await asyncio.to_thread(t.join, remaining)
        # let callbacks scheduled by the last batch run
        await asyncio.sleep(0)
        if not t.is_alive():
            self.close()
        return not t.is_alive()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Synchronous stop (no event loop): finish queued samples and join the worker."""
        with self._lock:
            self._accepting = False
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout_s)
        self.close()

    def close(self) -> None:
        """Release the conversion threads (after the worker stopped)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    # --- worker side -----------------------------------------------------------------

    def _run(self) -> None:
        s = self.settings
        max_wait = s.max_wait_ms / 1000.0
        stop = False
        while not stop:
            first = self._queue.get()
            if isinstance(first, _Stop):
                break
            batch: list[EngineSample | _Unregister] = [first]
            deadline = time.monotonic() + max_wait
            while sum(isinstance(b, EngineSample) for b in batch) < s.max_batch:
                left = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, _Stop):
                    stop = True
                    break
                batch.append(item)
            try:
                self.process(batch)
            # device-worker boundary: a bug in one batch is logged and kept in .error
            # for inspection; the batch's streams are released and the worker goes on
            except Exception as exc:
                log.exception("device worker: batch of %d failed", len(batch))
                self.error = exc
                self._release(batch)

    def _release(self, batch: Sequence[EngineSample | _Unregister]) -> None:
        with self._lock:
            for b in batch:
                if isinstance(b, EngineSample) and (a := self._admission.get(b.stream_id)):
                    a.backlog = max(0, a.backlog - 1)

    def _state(self, sid: str) -> _WindowState | None:
        st = self._states.get(sid)
        if st is None:
            with self._lock:
                a = self._admission.get(sid)
            if a is None:
                return None
            st = _WindowState(self.dim, self.device, self.eps, a.hop, self.zero_step_angle_deg)
            self._states[sid] = st
        return st

    def process(self, batch: Sequence[EngineSample | _Unregister]) -> list[StreamScore]:
        """Embed and score one micro-batch (the worker's step; callable directly in tests
        and benchmarks without the thread). Returns the scores it delivered."""
        m = self.metrics
        t_start = time.monotonic()
        samples: list[EngineSample] = []
        rgbs: list[RGBArray | YUVPlanes] = []
        todo: list[EngineSample] = []
        for item in batch:
            if isinstance(item, _Unregister):
                self._states.pop(item.stream_id, None)
            else:
                todo.append(item)
        # one conversion per distinct frame (repeated samples share one; a PyAV frame must
        # not be converted by two threads at once), in parallel across frames
        distinct = list({id(s.frame): s.frame for s in todo}.values())
        rgb_of = dict(
            zip(
                (id(f) for f in distinct),
                self._pool.map(self._convert, distinct)
                if self._pool is not None and len(distinct) > 1
                else map(self._convert, distinct),
            )
        )
        converted = [rgb_of[id(s.frame)] for s in todo]
        for item, rgb in zip(todo, converted):
            if rgb is None:
                log.warning("stream %s: frame conversion failed", item.stream_id)
                if m is not None:
                    m.frames_dropped.labels(item.stream_id, "convert_error").inc()
                continue
            samples.append(item)
            rgbs.append(rgb)
        self._release([b for b in batch if isinstance(b, EngineSample)])
        if not samples:
            return []
        t_conv = time.monotonic()
        z = self.embedder.embed_tensor(rgbs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t_embed = time.monotonic()
        self.samples_embedded += len(samples)

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
            m.queue_samples.set(self._queue.qsize())
            stage = m.stage_latency
            for smp in samples:
                stage.labels("queue").observe(max(0.0, t_start - smp.arrival_s))
            stage.labels("convert").observe(t_conv - t_start)
            stage.labels("embed").observe(t_embed - t_conv)
            stage.labels("geometry").observe(t_geom - t_embed)
            if ready:
                stage.labels("classify").observe(t_cls - t_geom)
            for sc in out:
                m.windows_scored.labels(sc.stream_id).inc()
            if self._batches % 50 == 1:
                self._record_memory(m)
        self._deliver(out)
        return out

    def _deliver(self, scores: list[StreamScore]) -> None:
        for sc in scores:
            with self._lock:
                a = self._admission.get(sc.stream_id)
            if a is None:
                continue
            if self._loop is not None:
                try:
                    self._loop.call_soon_threadsafe(a.callback, sc)
                except RuntimeError:  # the loop closed under us at shutdown
                    return
            else:
                a.callback(sc)

    def _record_memory(self, m: StreamMetrics) -> None:
        dev = str(self.device)
        if self.device.type == "cuda":
            m.device_memory.labels(dev, "allocated").set(torch.cuda.memory_allocated(self.device))
            m.device_memory.labels(dev, "reserved").set(torch.cuda.memory_reserved(self.device))
        else:
            m.device_memory.labels(dev, "rss").set(rss_bytes())


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
    conversion is the faster of the two. Both give the same pixels (monitor.colour)."""
    if setting == "auto":
        return "yuv" if device.type == "cuda" else "rgb"
    return setting

