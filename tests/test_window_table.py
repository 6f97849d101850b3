"""The engine's batched host step gives what one WindowRing per stream gives, bit for bit:
WindowTable against WindowRing.commit / features."""

from __future__ import annotations

import collections
from typing import Any

import numpy as np
import pytest

from monitor.core.geometry import ZERO_STEP_EPS, WindowRing
from monitor.core.window_table import WindowTable
from monitor.types import WINDOW_SAMPLES


class Reference:
    """One stream as the host step kept it before WindowTable: a ring committed the
    StepTable's values and deques of the last 24 times and arrivals and 23 repeated flags."""

    def __init__(self, angle: float) -> None:
        self.ring = WindowRing(4, zero_step_angle_deg=angle)
        self.times: collections.deque[float] = collections.deque(maxlen=WINDOW_SAMPLES)
        self.arrivals: collections.deque[float] = collections.deque(maxlen=WINDOW_SAMPLES)
        self.repeats: collections.deque[bool] = collections.deque(maxlen=WINDOW_SAMPLES - 1)

    def commit(self, pos: int, d: float, dot: float, t: float, arr: float, rep: bool,
               due: bool) -> tuple[Any, ...] | None:
        if pos == 1:
            self.ring.commit(None, None)
            self.times.clear()
            self.arrivals.clear()
            self.repeats.clear()
        else:
            self.ring.commit(d, dot)
            self.repeats.append(rep)
        self.times.append(t)
        self.arrivals.append(arr)
        if not due:
            return None
        w = self.ring.features()
        assert w is not None
        return (w.distances, w.angles_deg, w.repeated_frames, sum(self.repeats),
                self.times[0], self.arrivals[0])


def _steps(rng: np.random.Generator, n: int) -> np.ndarray:
    """Distances and dots with zero-length steps, cosines past +-1 and NaN among them."""
    d = rng.exponential(1.0, n)
    d[rng.random(n) < 0.15] = 0.0
    d[rng.random(n) < 0.05] = ZERO_STEP_EPS * 0.5
    dot = rng.uniform(-1.3, 1.3, n) * d * rng.exponential(1.0, n)
    dot[rng.random(n) < 0.02] = np.nan
    d[rng.random(n) < 0.01] = np.nan
    return np.stack([d, dot], axis=1)


@pytest.mark.parametrize("angle", [0.0, 90.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_window_table_gives_what_a_ring_per_stream_gives(angle: float, seed: int) -> None:
    """Many streams, batches with one or several samples of a stream (a run longer than a
    window too), restarts, hops 1 to 3, zero-length steps, NaN, the table growing."""
    rng = np.random.default_rng(seed)
    streams = 9
    table = WindowTable(ZERO_STEP_EPS, angle, capacity=2)
    slot_of = rng.permutation(20)[:streams].tolist()
    refs = [Reference(angle) for _ in range(streams)]
    hop = [int(h) for h in rng.integers(1, 4, streams)]
    pos = [0] * streams
    windows = 0
    for batch_no in range(300):
        if batch_no % 40 == 39:  # a backlog: one stream hands over more than a window
            who = [int(rng.integers(0, streams))] * 30
        elif batch_no % 2:
            who = rng.permutation(streams)[: rng.integers(1, streams + 1)].tolist()
        else:
            who = [int(x) for x in rng.integers(0, streams, rng.integers(1, 15))]
        n = len(who)
        steps = _steps(rng, n)
        times = rng.uniform(0, 100, n).tolist()
        arrivals = rng.uniform(0, 100, n).tolist()
        repeated = (rng.random(n) < 0.2).tolist()
        positions, due, expected = [], [], []
        for i, s in enumerate(who):
            pos[s] = 1 if pos[s] == 0 or rng.random() < 0.01 else pos[s] + 1
            positions.append(pos[s])
            due.append(pos[s] >= WINDOW_SAMPLES and (pos[s] - WINDOW_SAMPLES) % hop[s] == 0)
            r = refs[s].commit(pos[s], float(steps[i, 0]), float(steps[i, 1]), times[i],
                               arrivals[i], repeated[i], due[-1])
            if r is not None:
                expected.append((i, *r))
        got = table.commit([slot_of[s] for s in who], positions, steps, times, arrivals,
                           repeated, due)
        assert got.rows == [e[0] for e in expected]
        for k, (_, d, a, zeros, reps, start, first) in enumerate(expected):
            assert got.distances[k].tobytes() == d.tobytes()
            assert got.angles_deg[k].tobytes() == a.tobytes()
            assert (got.zero_steps[k], got.repeats[k]) == (zeros, reps)
            assert (got.start_s[k], got.first_arrival[k]) == (start, first)
            assert isinstance(got.zero_steps[k], int) and isinstance(got.start_s[k], float)
        windows += len(expected)
    assert windows > 500


def test_a_batch_without_due_windows_gives_empty_arrays() -> None:
    table = WindowTable(ZERO_STEP_EPS, 0.0)
    got = table.commit([0, 1, 0], [1, 1, 2], np.ones((3, 2)), [0.0] * 3, [0.0] * 3,
                       [False] * 3, [False] * 3)
    assert got.rows == [] and got.distances.shape == (0, WINDOW_SAMPLES - 1)
    assert got.angles_deg.shape == (0, WINDOW_SAMPLES - 2)
