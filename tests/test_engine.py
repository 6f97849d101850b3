"""The incremental engine (SPEC section 8): streamed features equal the batch reference.

Real encoded clips, the real (tiny, random) DINOv2 through the real loading code,
the real device worker thread with micro-batching across streams.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from monitor.config import EngineSettings
from monitor.core.embed import Embedder
from monitor.core.geometry import window_features
from monitor.live.batch import EngineSample
from monitor.live.engine import Engine
from monitor.media.decode import LiveVideo, frame_to_rgb
from monitor.media.sampler import LiveResolved, LiveSampler
from monitor.media.sources import SourceFrame
from monitor.metrics import StreamMetrics
from monitor.types import SAMPLE_INTERVAL_S, WINDOW_SAMPLES, RGBArray, StreamScore

from .media import write_clip


@pytest.fixture(scope="module")
def small_embedder(tiny_model_dir: Path) -> Iterator[Embedder]:
    """The tiny model at 112 px (65 tokens): the same code path, 4x less work on 2 cores."""
    from monitor.core.backbone import load_backbone

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: one thread is faster than two
    try:
        yield Embedder(load_backbone(str(tiny_model_dir), "cpu", image_size=112), batch_size=32)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("engine") / "clip.mp4"
    write_clip(path, fps=30, n_frames=180, size=(64, 48), motion="jitter")
    return path


def decoded(path: Path) -> list[SourceFrame]:
    video = LiveVideo(str(path))
    try:
        return [
            SourceFrame(pts_s=pts, arrival_s=0.0, index=i, image=f, to_rgb=frame_to_rgb)
            for i, (f, pts) in enumerate(video.frames())
        ]
    finally:
        video.close()


def live_samples(
    frames: Sequence[SourceFrame], stream: str, drop: range = range(0)
) -> list[LiveResolved[SourceFrame]]:
    """Run frames (minus ``drop``, a hole in the feed) through the live sampler."""
    sampler: LiveSampler[SourceFrame] = LiveSampler(gap_tolerance_s=0.3)
    out = []
    for i, f in enumerate(frames):
        if i in drop:
            continue
        out.extend(sampler.push(f, f.pts_s)[1])
    return out


class Collector:
    def __init__(self) -> None:
        self.scores: list[StreamScore] = []
        self.lock = threading.Lock()

    def __call__(self, sc: StreamScore) -> None:
        with self.lock:
            self.scores.append(sc)


def reference(embedder: Embedder, samples: Sequence[LiveResolved[SourceFrame]]) -> np.ndarray:
    z = embedder.embed_tensor([s.frame.rgb() for s in samples]).double().cpu().numpy()
    return window_features(z).features


def check_against_batch(
    embedder: Embedder, scores: list[StreamScore], samples: list[LiveResolved[SourceFrame]],
    hop: int,
) -> int:
    """Every streamed window equals window_features of its 24 frames, embedded in one batch."""
    by_key = {(s.segment, s.k): s for s in samples}
    expected = []
    for s in samples:  # windows that must be scored: 24 consecutive k of one segment, at hop
        if s.k >= WINDOW_SAMPLES - 1 and (s.k - (WINDOW_SAMPLES - 1)) % hop == 0:
            expected.append((s.segment, s.k))
    assert [(sc.segment, round((sc.end_s - sc.start_s) / SAMPLE_INTERVAL_S)) for sc in scores] == [
        (seg, WINDOW_SAMPLES - 1) for seg, _ in expected
    ]
    for sc, (seg, k_end) in zip(scores, expected):
        window = [by_key[(seg, k)] for k in range(k_end - WINDOW_SAMPLES + 1, k_end + 1)]
        assert sc.start_s == pytest.approx(window[0].time_s)
        assert sc.end_s == pytest.approx(window[-1].time_s)
        ref = reference(embedder, window)
        np.testing.assert_allclose(sc.score.window.features, ref, rtol=1e-5, atol=1e-4)
    return len(expected)


def run_engine(
    embedder: Embedder, streams: dict[str, list[LiveResolved[SourceFrame]]],
    settings: EngineSettings, hops: dict[str, int] | None = None,
) -> dict[str, list[StreamScore]]:
    engine = Engine(embedder, None, settings, StreamMetrics(CollectorRegistry()))
    cols = {sid: Collector() for sid in streams}
    for sid in streams:
        engine.register(sid, cols[sid], (hops or {}).get(sid))
    engine.start()
    # interleave the streams sample by sample, as live feeds arrive
    n = max(len(v) for v in streams.values())
    for i in range(n):
        for sid, samples in streams.items():
            if i < len(samples):
                s = samples[i]
                ok = engine.submit(EngineSample(sid, s.segment, s.k, s.time_s, s.frame, 0.0,
                                                s.repeated))
                assert ok
    engine.stop(60)
    assert engine.error is None
    return {sid: c.scores for sid, c in cols.items()}


def test_streamed_features_equal_batch_for_every_window(
    clip: Path, small_embedder: Embedder
) -> None:
    frames = decoded(clip)
    samples = live_samples(frames, "a")
    assert len(samples) >= 50
    settings = EngineSettings(max_batch=5, max_wait_ms=2, queue_samples=1000,
                              max_backlog_per_stream=1000)
    scores = run_engine(small_embedder, {"a": samples}, settings)["a"]
    n = check_against_batch(small_embedder, scores, samples, hop=1)
    assert n == len(samples) - WINDOW_SAMPLES + 1
    assert [s.seq for s in scores] == list(range(n))


def test_several_streams_gaps_and_hops_share_the_device_worker(
    clip: Path, small_embedder: Embedder
) -> None:
    frames = decoded(clip)
    a = live_samples(frames, "a")
    b = live_samples(frames, "b", drop=range(75, 90))  # a half-second hole: a gap
    c = live_samples(frames[20:], "c")
    assert {s.segment for s in b} == {0, 1}
    settings = EngineSettings(max_batch=7, max_wait_ms=5, queue_samples=1000,
                              max_backlog_per_stream=1000)
    out = run_engine(small_embedder, {"a": a, "b": b, "c": c}, settings, hops={"c": 3})
    check_against_batch(small_embedder, out["a"], a, hop=1)
    check_against_batch(small_embedder, out["b"], b, hop=1)
    check_against_batch(small_embedder, out["c"], c, hop=3)
    # no window of b spans its gap: each lies within one segment's samples
    seg0_end = max(s.time_s for s in b if s.segment == 0)
    for sc in out["b"]:
        assert sc.end_s <= seg0_end + 1e-9 or sc.segment == 1
    assert {sc.segment for sc in out["b"]} == {0, 1}


class GatedEmbedder:
    """The real embedder behind a gate, so the test decides when the device is busy."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.gate = threading.Event()

    @property
    def embedding_dim(self) -> int:
        return self.inner.embedding_dim

    @property
    def device(self) -> torch.device:
        return self.inner.device

    def embed_tensor(self, frames: Sequence[RGBArray]) -> torch.Tensor:
        self.gate.wait(60)
        return self.inner.embed_tensor(frames)


def test_overload_skips_whole_windows_never_single_samples(
    clip: Path, small_embedder: Embedder
) -> None:
    frames = decoded(clip)
    samples = live_samples(frames, "a")
    registry = CollectorRegistry()
    metrics = StreamMetrics(registry)
    gated = GatedEmbedder(small_embedder)
    settings = EngineSettings(max_batch=4, max_wait_ms=0, queue_samples=1000,
                              max_backlog_per_stream=6)
    engine = Engine(gated, None, settings, metrics)
    col = Collector()
    engine.register("a", col)
    engine.start()
    accepted = []
    flags = []
    for i, s in enumerate(samples):
        if i >= 10:
            gated.gate.set()  # from here on the device keeps up with the feed
            while engine.backlog("a"):
                threading.Event().wait(0.005)
        ok = engine.submit(EngineSample("a", s.segment, s.k, s.time_s, s.frame, 0.0, s.repeated))
        flags.append(ok)
        if ok:
            accepted.append(s)
    gated.gate.set()
    engine.stop(60)
    dropped = len(samples) - len(accepted)
    skipped = registry.get_sample_value(
        "restrav_stream_windows_skipped_total", {"stream": "a", "reason": "overload"})
    assert skipped is not None and skipped >= 1
    # each skip drops one whole window's worth of consecutive samples (the input may end
    # inside the last one)
    drop_runs, run = [], 0
    for ok in [*flags, True]:
        if not ok:
            run += 1
        elif run:
            drop_runs.append(run)
            run = 0
    ends_in_skip = not flags[-1]
    complete = drop_runs[: len(drop_runs) - ends_in_skip]
    assert all(r % WINDOW_SAMPLES == 0 for r in complete)  # back-to-back skips merge
    assert sum(-(-r // WINDOW_SAMPLES) for r in drop_runs) == skipped
    assert registry.get_sample_value(
        "restrav_stream_frames_dropped_total", {"stream": "a", "reason": "overload"}) == dropped
    # windows are scored only over accepted, consecutive samples, equal to the batch reference
    runs: list[list[LiveResolved[SourceFrame]]] = [[]]
    for s in accepted:
        if runs[-1] and s.k != runs[-1][-1].k + 1:
            runs.append([])
        runs[-1].append(s)
    relabeled = [
        LiveResolved(s.time_s, s.frame, s.frame_index, s.repeated, seg, k)
        for seg, run in enumerate(runs) for k, s in enumerate(run)
    ]
    renumbered = [
        StreamScore(sc.stream_id, sc.seq, next(i for i, r in enumerate(runs)
                    if r[0].time_s <= sc.start_s + 1e-9 and sc.end_s <= r[-1].time_s + 1e-9),
                    sc.start_s, sc.end_s, sc.score, sc.arrival_s, sc.scored_at)
        for sc in col.scores
    ]
    check_against_batch(small_embedder, renumbered, relabeled, hop=1)
    assert col.scores, "windows are scored again after the overload"


async def test_drain_past_its_deadline_drops_the_queue_and_stops_after_the_batch(
    clip: Path, small_embedder: Embedder
) -> None:
    samples = live_samples(decoded(clip), "a")[:10]
    registry = CollectorRegistry()
    gated = GatedEmbedder(small_embedder)  # the first batch blocks: the device is busy
    settings = EngineSettings(max_batch=4, max_wait_ms=0, queue_samples=1000,
                              max_backlog_per_stream=1000)
    engine = Engine(gated, None, settings, StreamMetrics(registry))
    engine.register("a", Collector())
    engine.start()
    for s in samples:
        assert engine.submit(EngineSample("a", s.segment, s.k, s.time_s, s.frame, 0.0,
                                          s.repeated))
    assert not await engine.drain(0.2)  # the gated batch outlasts the deadline
    assert engine.running and engine.backlog("a") == 0
    dropped = registry.get_sample_value(
        "restrav_stream_frames_dropped_total", {"stream": "a", "reason": "shutdown"})
    counts = engine.counts("a")
    assert counts is not None and dropped is not None
    assert 6 <= dropped == counts.frames_dropped <= 9  # all but the batch in flight
    gated.gate.set()
    await asyncio.to_thread(engine.stop, 60)
    assert not engine.running and engine.error is None
    # the batch in flight finished; what was queued behind it never reached the device
    assert engine.samples_embedded == len(samples) - dropped


def test_scores_carry_the_classifier_probability(clip: Path, small_embedder: Embedder) -> None:
    from monitor.learn.fitting import fit_classifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 21))
    clf = fit_classifier(x, (x[:, 0] > 0).astype(float), kind="logreg")
    frames = decoded(clip)
    samples = live_samples(frames, "a")[:30]
    engine = Engine(small_embedder, clf, EngineSettings(max_batch=8))
    col = Collector()
    engine.register("a", col)
    batch = [EngineSample("a", s.segment, s.k, s.time_s, s.frame, 0.0) for s in samples]
    engine.process(batch)
    assert len(col.scores) == 30 - WINDOW_SAMPLES + 1
    for sc in col.scores:
        p = float(clf.predict_proba(sc.score.window.features[None, :])[0])
        assert sc.p_ai == pytest.approx(p)
        assert sc.score.threshold == pytest.approx(clf.threshold)


@pytest.mark.cuda
def test_engine_on_cuda_matches_cpu_reference(clip: Path, tiny_model_dir: Path) -> None:
    from monitor.core.backbone import load_backbone

    gpu = Embedder(load_backbone(str(tiny_model_dir), "cuda"), batch_size=16)
    frames = decoded(clip)
    samples = live_samples(frames, "a")
    # the samples arrive far faster than real time while CUDA warms up: let them all queue
    big = EngineSettings(max_batch=8, max_wait_ms=2, queue_samples=100_000,
                         max_backlog_per_stream=len(samples) + 1)
    scores = run_engine(gpu, {"a": samples}, big)["a"]
    check_against_batch(gpu, scores, samples, hop=1)
