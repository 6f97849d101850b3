"""One micro-batch of the engine, in two steps (SPEC section 8).

:class:`BatchScorer` is what :class:`~monitor.live.engine.Engine`'s two threads run:

* :meth:`BatchScorer.embed` (the device step): converts the sampled frames, once per
  distinct frame and in parallel (RGB on the CPU, or 4:2:0 planes converted on the
  device with ``pixel_path="yuv"``; where the embedder prepares frames itself,
  ``prepares_frames``: a CPU runtime backend, each conversion thread also resizes its
  frames to the model input, single-threaded), and runs one forward pass for the batch;
* :meth:`BatchScorer.score` (the host step, in batch order; it owns the window
  states): computes every sample's step distance and angle on the device in one
  batched update (:class:`~monitor.core.geometry.StepTable`: one embedding and one
  step per stream, a few tensor operations per batch), synchronises with the host
  once, commits them to each stream's :class:`~monitor.core.geometry.WindowRing`
  (host side only), and for the windows that are due (full, then every ``hop``
  samples) computes the 21 features in one vectorised call, classifies them in one
  call and builds the :class:`~monitor.types.StreamScore`. A window is 24 consecutive
  samples of one segment: any discontinuity restarts the stream's trajectory.

The features are in the feature convention of the classifier applied. Delivery,
admission and the threads are the engine's; this module never takes its lock.
"""

from __future__ import annotations

import collections
import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch

from ..config import EngineSettings
from ..core.geometry import ZERO_STEP_EPS, StepTable, WindowRing, features_from_steps_batch
from ..media.decode_guard import rss_bytes
from ..metrics import StreamMetrics
from ..types import (
    WINDOW_SAMPLES,
    Score,
    StreamScore,
    WindowClassifier,
    WindowFeatures,
    zero_step_angle_of,
)
from .conversion import (
    FramePreparer,
    RGBFrame,
    TensorEmbedder,
    conversion_pool,
    convert_prepared,
    convert_rgb,
    convert_yuv,
    pixel_path,
)

log = logging.getLogger("restrav.engine")


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


@dataclass
class Unregister:
    """A queue item: forget the stream's window state (in batch order)."""

    stream_id: str


@dataclass
class Embedded:
    """A batch between the device step and the host step."""

    batch: Sequence[EngineSample | Unregister]
    samples: list[EngineSample]
    z: torch.Tensor | None
    t_start: float
    t_conv: float
    t_embed: float
    device_s: float = 0.0


class WindowState:
    """Worker side state of one stream: its slot in the scorer's StepTable, its host ring
    and the window's metadata."""

    def __init__(
        self,
        dim: int,
        device: torch.device,
        eps: float,
        hop: int,
        scored: Any,
        zero_step_angle_deg: float,
        slot: int = 0,
    ) -> None:
        # host side only: the device side is the scorer's StepTable (slot ``slot``)
        self.ring = WindowRing(dim, device, eps, zero_step_angle_deg=zero_step_angle_deg,
                               device_state=False)
        self.slot = slot
        self.position = 0  # in the current window's trajectory (1: its first sample)
        self.hop = hop
        self.segment = -1
        self.k = -1
        self.times: collections.deque[float] = collections.deque(maxlen=WINDOW_SAMPLES)
        self.arrivals: collections.deque[float] = collections.deque(maxlen=WINDOW_SAMPLES)
        self.repeats: collections.deque[bool] = collections.deque(maxlen=WINDOW_SAMPLES - 1)
        self.seq = 0
        self.scored = scored  # the stream's windows_scored child, or None


class BatchScorer:
    """The two steps of a micro-batch (module docstring). ``hop_of(stream)`` is the
    stream's hop, or None once it is unregistered (its samples are then ignored)."""

    def __init__(
        self,
        embedder: TensorEmbedder,
        classifier: WindowClassifier | None,
        settings: EngineSettings,
        metrics: StreamMetrics | None,
        hop_of: Callable[[str], int | None],
    ) -> None:
        self.embedder = embedder
        self.classifier = classifier
        self.settings = settings
        self.metrics = metrics
        self.hop_of = hop_of
        self.device = embedder.device
        self.dim = embedder.embedding_dim
        self.eps = settings.zero_step_eps if settings.zero_step_eps else ZERO_STEP_EPS
        # the windows' features are in the convention of the classifier that scores them
        self.zero_step_angle_deg = zero_step_angle_of(classifier)
        self._states: dict[str, WindowState] = {}
        self.table = StepTable(self.dim, self.device)
        self._batches = 0
        self.pixel_path = pixel_path(settings.pixel_path, self.device)
        self._convert: Callable[[RGBFrame], Any] = (
            convert_yuv if self.pixel_path == "yuv" else convert_rgb)
        prepares = self.pixel_path == "rgb" and getattr(embedder, "prepares_frames", False)
        if prepares:
            self._convert = functools.partial(convert_prepared, cast(FramePreparer, embedder))
        self.prepares_frames = bool(prepares)
        """The conversion threads also make the model input (see the module docstring)."""
        self._pool = (
            conversion_pool(settings.convert_threads, single_threaded=prepares)
            if settings.convert_threads > 1
            else None
        )
        self.windows_scored = 0
        self.samples_embedded = 0

    def close(self) -> None:
        """Release the conversion threads (after the engine's threads stopped)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    def state(self, sid: str) -> WindowState | None:
        st = self._states.get(sid)
        if st is None:
            hop = self.hop_of(sid)
            if hop is None:
                return None
            m = self.metrics
            st = WindowState(self.dim, self.device, self.eps, hop,
                              m.windows_scored.labels(sid) if m is not None else None,
                              self.zero_step_angle_deg, self.table.add())
            self._states[sid] = st
        return st

    def embed(self, batch: Sequence[EngineSample | Unregister]) -> Embedded:
        """The device step: convert the frames and run the forward pass."""
        m = self.metrics
        t_start = time.monotonic()
        samples: list[EngineSample] = []
        # RGB arrays, YUV planes or prepared pixels (a FramePreparer's)
        rgbs: list[Any] = []
        todo = [item for item in batch if isinstance(item, EngineSample)]
        # one conversion per distinct frame (repeated samples share one; a PyAV frame must
        # not be converted by two threads at once), in parallel across frames
        distinct = list({id(s.frame): s.frame for s in todo}.values())
        rgb_of = dict(zip((id(f) for f in distinct), self.convert_all(distinct)))
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
            return Embedded(batch, samples, None, t_start, t_conv, t_conv)
        z = self.embedder.embed_tensor(rgbs)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t_embed = time.monotonic()
        self.samples_embedded += len(samples)
        return Embedded(batch, samples, z, t_start, t_conv, t_embed)

    def convert_all(self, frames: list[RGBFrame]) -> list[Any]:
        """Convert ``frames`` in order: in one contiguous chunk per conversion thread, so
        that a batch costs one pool round trip per thread, not one per frame (about 80 us
        each: more than taking the planes of a GPU frame)."""
        convert = self._convert
        if self._pool is None or len(frames) < 2:
            return [convert(f) for f in frames]
        k = min(self.settings.convert_threads, len(frames))
        size = -(-len(frames) // k)
        chunks = [frames[i : i + size] for i in range(0, len(frames), size)]
        out: list[Any] = []
        for part in self._pool.map(lambda c: [convert(f) for f in c], chunks):
            out.extend(part)
        return out

    def score(self, e: Embedded) -> list[StreamScore]:
        """The host step: ring updates, features, classifier, metrics (in batch order;
        it owns the window states). Returns the batch's scores, for the caller to deliver."""
        m = self.metrics
        for item in e.batch:
            if isinstance(item, Unregister):
                gone = self._states.pop(item.stream_id, None)
                if gone is not None:
                    self.table.remove(gone.slot)
        samples, z = e.samples, e.z
        if z is None:
            return []
        t_start, t_conv, t_embed = e.t_start, e.t_conv, e.t_embed

        # geometry: every sample's step on the device in one batched update (StepTable),
        # synchronise once, then commit in order
        states: list[WindowState | None] = []
        rows: list[int] = []
        slots: list[int] = []
        positions: list[int] = []
        for i, smp in enumerate(samples):
            st = self.state(smp.stream_id)
            states.append(st)
            if st is None:
                continue
            restart = not (smp.segment == st.segment and smp.k == st.k + 1)
            st.segment, st.k = smp.segment, smp.k
            st.position = 1 if restart else st.position + 1
            rows.append(i)
            slots.append(st.slot)
            positions.append(st.position)
        host = np.zeros((0, 2))
        if rows:
            zs = z if len(rows) == len(samples) else z[torch.tensor(rows, device=z.device)]
            host = self.table.push(zs, slots, positions).cpu().numpy()
        due: list[tuple[WindowState, EngineSample, tuple[Any, Any, int], float, int,
                        float]] = []
        j = -1
        for smp, st in zip(samples, states):
            if st is None:
                continue
            j += 1
            if positions[j] == 1:
                st.ring.commit(None, None)
                st.times.clear()
                st.arrivals.clear()
                st.repeats.clear()
            else:
                st.ring.commit(float(host[j, 0]), float(host[j, 1]))
                st.repeats.append(smp.repeated)
            st.times.append(smp.time_s)
            st.arrivals.append(smp.arrival_s)
            ring = st.ring
            if ring.ready and (ring.samples - WINDOW_SAMPLES) % st.hop == 0:
                steps = ring.window_steps()
                assert steps is not None
                due.append((st, smp, steps, st.times[0], sum(st.repeats), st.arrivals[0]))
        # the features of every window due in the batch in one vectorised call
        ready: list[tuple[WindowState, EngineSample, WindowFeatures, int, float]] = []
        if due:
            feats = features_from_steps_batch(np.stack([w[2][0] for w in due]),
                                              np.stack([w[2][1] for w in due]))
            for row, (st, smp, (d, a, zeros), start_s, reps, first) in zip(feats, due):
                wf = WindowFeatures(features=row, repeated_frames=zeros, start_s=start_s,
                                    distances=d, angles_deg=a,
                                    zero_step_angle_deg=self.zero_step_angle_deg)
                ready.append((st, smp, wf, reps, first))
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
        return out

    def _record_memory(self, m: StreamMetrics) -> None:
        dev = str(self.device)
        if self.device.type == "cuda":
            m.device_memory.labels(dev, "allocated").set(torch.cuda.memory_allocated(self.device))
            m.device_memory.labels(dev, "reserved").set(torch.cuda.memory_reserved(self.device))
        else:
            m.device_memory.labels(dev, "rss").set(rss_bytes())
