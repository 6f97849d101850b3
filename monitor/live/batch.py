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
  once, commits the whole batch to the streams' windows in a few numpy operations
  (:class:`~monitor.core.window_table.WindowTable`, which also gathers the windows
  that are due: full, then every ``hop`` samples), computes their 21 features in one
  vectorised call, classifies them in one call and builds the
  :class:`~monitor.types.StreamScore`. A window is 24 consecutive
  samples of one segment: any discontinuity restarts the stream's trajectory.

The features are in the feature convention of the classifier applied. Delivery,
admission and the threads are the engine's; this module never takes its lock.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch

from ..config import EngineSettings
from ..core.geometry import ZERO_STEP_EPS, StepTable, features_from_steps_batch
from ..core.window_table import DueWindows, WindowTable
from ..media.decode_guard import rss_bytes
from ..metrics import StreamMetrics, adder, observe_each
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
    """Worker side state of one stream: its slot in the scorer's StepTable and
    WindowTable (which hold its window's geometry and sample times) and the window's
    metadata."""

    def __init__(self, hop: int, scored: Any, slot: int = 0) -> None:
        self.slot = slot
        self.position = 0  # in the current window's trajectory (1: its first sample)
        self.hop = hop
        self.segment = -1
        self.k = -1
        self.seq = 0
        self.scored = scored  # adds to the stream's windows_scored child, or None


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
        self.windows = WindowTable(self.eps, self.zero_step_angle_deg)
        self._batches = 0
        self._stages: dict[str, Any] = {}  # restrav_stage_latency_seconds children
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
            scored = adder(m.windows_scored.labels(sid)) if m is not None else None
            st = WindowState(hop, scored, self.table.add())
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
        # synchronise once, then commit the batch to the windows' host side (WindowTable)
        kept: list[EngineSample] = []
        states: list[WindowState] = []
        rows: list[int] = []
        slots: list[int] = []
        positions: list[int] = []
        due: list[bool] = []
        known = self._states
        for i, smp in enumerate(samples):
            st = known.get(smp.stream_id) or self.state(smp.stream_id)
            if st is None:
                continue
            restart = not (smp.segment == st.segment and smp.k == st.k + 1)
            st.segment, st.k = smp.segment, smp.k
            pos = st.position = 1 if restart else st.position + 1
            kept.append(smp)
            states.append(st)
            rows.append(i)
            slots.append(st.slot)
            positions.append(pos)
            # a window is due once full, then every hop samples
            due.append(pos >= WINDOW_SAMPLES and (pos - WINDOW_SAMPLES) % st.hop == 0)
        w: DueWindows | None = None
        feats: Any = None
        if rows:
            zs = z if len(rows) == len(samples) else z[torch.tensor(rows, device=z.device)]
            host = self.table.push(zs, slots, positions).cpu().numpy()
            w = self.windows.commit(slots, positions, host, [s.time_s for s in kept],
                                    [s.arrival_s for s in kept], [s.repeated for s in kept],
                                    due)
            if w.rows:
                # the features of every window due in the batch in one vectorised call
                feats = features_from_steps_batch(w.distances, w.angles_deg)
            else:
                w = None
        t_geom = time.monotonic()

        probs: list[float | None] | None = None
        threshold: float | None = None
        if w is not None and self.classifier is not None:
            probs = np.asarray(self.classifier.predict_proba(feats), dtype=np.float64).tolist()
            threshold = float(self.classifier.threshold)
        t_cls = time.monotonic()

        out: list[StreamScore] = []
        if w is not None:
            now = time.time()
            wall = now - time.monotonic()  # monotonic -> Unix time
            angle = self.zero_step_angle_deg
            for j, row, d, a, zeros, start_s, reps, first, prob in zip(
                    w.rows, feats, w.distances, w.angles_deg, w.zero_steps, w.start_s,
                    w.repeats, w.first_arrival, probs or [None] * len(w.rows)):
                st, smp = states[j], kept[j]
                wf = WindowFeatures(row, zeros, start_s, d, a, angle)
                sid = smp.stream_id
                out.append(StreamScore(sid, st.seq, smp.segment, start_s, smp.time_s,
                                       Score(wf, prob, threshold, sid, reps), smp.arrival_s,
                                       now, first + wall, smp.arrival_s + wall))
                st.seq += 1
                if st.scored is not None:
                    st.scored(1)
        self.windows_scored += len(out)
        self._batches += 1
        if m is not None:
            m.batch_size.observe(len(samples))
            stage = self._stage
            observe_each(stage(m, "queue"),
                         [max(0.0, t_start - smp.arrival_s) for smp in samples])
            stage(m, "convert").observe(t_conv - t_start)
            stage(m, "embed").observe(t_embed - t_conv)
            stage(m, "geometry").observe(t_geom - t_embed)
            if out:
                stage(m, "classify").observe(t_cls - t_geom)
            if self._batches % 50 == 1:
                self._record_memory(m)
        return out

    def _stage(self, m: StreamMetrics, name: str) -> Any:
        """The child ``name`` of ``restrav_stage_latency_seconds``, made on first use (as
        ``labels()`` each batch did: a stage's series appears when first observed)."""
        child = self._stages.get(name)
        if child is None:
            child = self._stages[name] = m.stage_latency.labels(name)
        return child

    def _record_memory(self, m: StreamMetrics) -> None:
        dev = str(self.device)
        if self.device.type == "cuda":
            m.device_memory.labels(dev, "allocated").set(torch.cuda.memory_allocated(self.device))
            m.device_memory.labels(dev, "reserved").set(torch.cuda.memory_reserved(self.device))
        else:
            m.device_memory.labels(dev, "rss").set(rss_bytes())
