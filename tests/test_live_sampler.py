"""LiveSampler: the open-ended 11.5 Hz grid of a live feed and its gaps."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.media.sampler import GridSampler, LiveSampler, grid_times
from monitor.types import SAMPLE_INTERVAL_S


def feed(sampler: LiveSampler[int], times: list[float]):  # type: ignore[no-untyped-def]
    gaps, out = [], []
    for i, t in enumerate(times):
        reason, samples = sampler.push(i, t)
        if reason:
            gaps.append((i, reason))
        out.extend(samples)
    return gaps, out


def test_grid_is_anchored_at_the_first_frame_and_picks_the_frame_on_screen() -> None:
    times = [10.0 + i / 30 for i in range(90)]
    gaps, out = feed(LiveSampler(), times)
    assert gaps == []
    assert [s.k for s in out] == list(range(len(out)))
    for s in out:
        assert s.time_s == pytest.approx(10.0 + s.k * SAMPLE_INTERVAL_S)
        # the frame on screen: the last frame whose time is <= the sample time
        assert times[s.frame] <= s.time_s + 1e-9
        assert s.frame + 1 >= len(times) or times[s.frame + 1] > s.time_s + 1e-9
    assert all(s.segment == 0 for s in out)


def test_same_frames_as_the_file_sampler() -> None:
    times = [0.5 + i / 24 for i in range(72)]
    _, live = feed(LiveSampler(), times)
    grid = GridSampler(0.5 + t for t in grid_times(times[-1] - 0.5))
    ref = []
    for i, t in enumerate(times):
        ref.extend(grid.push(i, t))
    n = len(live)
    assert [r.frame for r in ref[:n]] == [s.frame for s in live]
    assert [r.repeated for r in ref[:n]] == [s.repeated for s in live]


def test_slow_source_repeats_frames_and_says_so() -> None:
    times = [i / 8 for i in range(24)]  # 8 fps < 11.5 Hz
    _, out = feed(LiveSampler(), times)
    assert any(s.repeated for s in out)
    for a, b in itertools.pairwise(out):
        assert b.repeated == (a.frame == b.frame)


@pytest.mark.parametrize(
    ("jump_to", "reason"), [(5.0, "pts_jump"), (0.0, "pts_backwards")]
)
def test_a_pts_discontinuity_starts_a_new_segment(jump_to: float, reason: str) -> None:
    times = [1.0 + i / 30 for i in range(30)] + [jump_to + i / 30 for i in range(30)]
    gaps, out = feed(LiveSampler(gap_tolerance_s=0.5), times)
    assert gaps == [(30, reason)]
    first = [s for s in out if s.segment == 0]
    second = [s for s in out if s.segment == 1]
    assert first and second
    # nothing of the old segment is resolved with a frame after the gap
    assert max(s.frame for s in first) < 30
    assert second[0].k == 0 and second[0].time_s == pytest.approx(jump_to)
    assert [s.k for s in second] == list(range(len(second)))


def test_external_gap_discards_pending_times() -> None:
    s = LiveSampler[int]()
    _, a = feed(s, [i / 30 for i in range(10)])
    s.gap()
    r, b = s.push(100, 10 / 30)
    assert r is None and b == []
    _, c = s.push(101, 11 / 30)
    assert [x.segment for x in c] == [1] and c[0].k == 0 and c[0].frame == 100
    assert a[-1].segment == 0


def test_rejects_non_finite_times() -> None:
    with pytest.raises(ValueError):
        LiveSampler[int]().push(0, math.nan)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.001, 0.2), min_size=2, max_size=120))
def test_property_samples_are_consecutive_and_causal(deltas: list[float]) -> None:
    t, times = 0.0, []
    for d in deltas:
        t += d
        times.append(t)
    _, out = feed(LiveSampler(gap_tolerance_s=0.5), times)
    for a, b in itertools.pairwise(out):
        assert b.k == a.k + 1 and b.frame >= a.frame
        assert b.time_s - a.time_s == pytest.approx(SAMPLE_INTERVAL_S)
    for s in out:
        assert times[s.frame] <= s.time_s + 1e-9


def test_arguments_must_be_positive() -> None:
    for gap, interval in ((0.0, 0.1), (-1.0, 0.1), (0.5, 0.0), (0.5, -0.1)):
        with pytest.raises(ValueError, match=r"^gap_tolerance_s and interval_s must be > 0$"):
            LiveSampler(gap_tolerance_s=gap, interval_s=interval)
    with pytest.raises(ValueError, match="frame time must be finite, got nan"):
        LiveSampler().push(0, math.nan)


def test_edges_within_the_time_slack_and_the_gap_tolerance() -> None:
    """Exactly at the slack or the tolerance is not a gap; a frame at a sample time plus
    the slack shows that sample; indices count every frame pushed, from 0."""
    eps = 1e-9  # monitor.media.sampler._TIME_EPS_S
    s: LiveSampler[str] = LiveSampler(gap_tolerance_s=0.5, interval_s=0.25)
    assert s.push("a", 0.0) == (None, [])
    assert s.push("b", 0.0) == (None, [])  # the same time again: not backwards
    reason, out = s.push("c", 0.25 + eps)  # 0.25 belongs to c
    assert reason is None
    assert [(r.time_s, r.frame, r.frame_index, r.k) for r in out] == [(0.0, "b", 1, 0)]
    reason, out = s.push("d", 0.25)  # back by the slack only: not backwards
    assert reason is None and out == []
    reason, out = s.push("e", 0.75)  # 0.5 after d: the tolerance, not beyond it
    assert reason is None
    assert [(r.time_s, r.frame, r.frame_index, r.repeated) for r in out] == [
        (0.25, "d", 3, False), (0.5, "d", 3, True)]
    assert s.frames_seen == 5 and s.segment == 0
    reason, out = s.push("f", 0.75 - 2 * eps)
    assert reason == "pts_backwards" and out == [] and s.segment == 1
    reason, out = s.push("g", 0.9)
    assert [(r.frame, r.frame_index, r.segment, r.k) for r in out] == [("f", 5, 1, 0)]
    assert s.frames_seen == 7


def test_default_gap_tolerance_is_half_a_second() -> None:
    s: LiveSampler[int] = LiveSampler()
    assert s.push(0, 0.0)[0] is None
    assert s.push(1, 0.45)[0] is None
    assert s.push(2, 1.0)[0] == "pts_jump"
