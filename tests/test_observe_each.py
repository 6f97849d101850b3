"""observe_each: a batch of observations exposes exactly what one observe() each does;
adder: a counter child's cheaper inc exposes exactly what inc() does."""

from __future__ import annotations

import math

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from monitor.metrics import STAGE_BUCKETS_S, adder, observe_each


def _exposed(r: CollectorRegistry) -> list[bytes]:
    return [ln for ln in generate_latest(r).splitlines() if b"_created" not in ln]


def _pair() -> tuple[CollectorRegistry, Histogram, CollectorRegistry, Histogram]:
    ra, rb = CollectorRegistry(), CollectorRegistry()
    a = Histogram("x_seconds", "x", ["stage"], buckets=STAGE_BUCKETS_S, registry=ra)
    b = Histogram("x_seconds", "x", ["stage"], buckets=STAGE_BUCKETS_S, registry=rb)
    return ra, a, rb, b


def test_the_exposition_equals_one_observe_per_value() -> None:
    """Values on bucket bounds, past the last bound, negative, NaN and inf; a sum whose
    float depends on the order of the additions."""
    rng = np.random.default_rng(0)
    ra, a, rb, b = _pair()
    for _ in range(50):
        values = [*rng.exponential(0.05, int(rng.integers(0, 60))).tolist(),
                  *STAGE_BUCKETS_S[: int(rng.integers(0, 4))], 0.1 + 1e-17, 1e-16]
        rng.shuffle(values)
        for v in values:
            a.labels("queue").observe(v)
        observe_each(b.labels("queue"), values)
    assert _exposed(ra) == _exposed(rb)
    for v in (-1.0, 100.0, math.inf, math.nan):
        a.labels("queue").observe(v)
    observe_each(b.labels("queue"), [-1.0, 100.0, math.inf, math.nan])
    assert _exposed(ra) == _exposed(rb)


class _Other:
    """A metric of another layout: records what it is given."""

    def __init__(self) -> None:
        self.seen: list[float] = []

    def observe(self, v: float) -> None:
        self.seen.append(v)

    inc = observe


def test_a_histogram_of_another_layout_is_observed_one_by_one() -> None:
    h = _Other()
    observe_each(h, [0.5, 0.25])  # type: ignore[arg-type]
    assert h.seen == [0.5, 0.25]


def test_the_host_step_observes_the_queue_per_sample_and_each_stage_per_batch() -> None:
    """BatchScorer.score: the queue latency of every sample (observe_each), the other
    stages once per batch, ``classify`` only in batches that scored a window (its series
    absent before the first, as with labels() per batch)."""
    import torch

    from bench.bench_host_step import _batches
    from monitor.config import EngineSettings
    from monitor.live.batch import BatchScorer
    from monitor.metrics import StreamMetrics

    class Embedder:
        device = torch.device("cpu")
        embedding_dim = 8

    registry = CollectorRegistry()
    scorer = BatchScorer(Embedder(), None, EngineSettings(convert_threads=1),  # type: ignore[arg-type]
                         StreamMetrics(registry), lambda sid: 1)

    def count(stage: str) -> float | None:
        return registry.get_sample_value("restrav_stage_latency_seconds_count",
                                         {"stage": stage})

    samples = scored = 0
    for i, e in enumerate(_batches(30, 10, 100, 8, seed=0)):
        scored += bool(scorer.score(e))
        samples += len(e.samples)
        assert count("queue") == samples
        assert count("convert") == count("embed") == count("geometry") == i + 1
        assert count("classify") == (scored or None)
    assert 0 < scored < 100


def test_an_adder_exposes_what_inc_does() -> None:
    """Counts of frames and samples per read (0 included) through :func:`adder` and
    through ``inc``: the same exposition; another layout falls back to ``inc``."""
    ra, rb = CollectorRegistry(), CollectorRegistry()
    a = Counter("x_total", "x", ["stream"], registry=ra)
    b = Counter("x_total", "x", ["stream"], registry=rb)
    add = adder(a.labels("s"))
    assert add != a.labels("s").inc  # the cheaper path is taken
    for n in [3, 0, 1, 2, 2, 7, 1]:
        add(n)
        b.labels("s").inc(n)
    assert _exposed(ra) == _exposed(rb)
    assert ra.get_sample_value("x_total", {"stream": "s"}) == 16
    c = _Other()
    adder(c)(4)  # type: ignore[arg-type]
    assert c.seen == [4]
