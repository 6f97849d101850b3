"""The 11.5 Hz sampling on real encoded clips with known timestamps (SPEC section 1)."""

from __future__ import annotations

import bisect
import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from monitor.media.decode_file import probe, sample_file
from monitor.media.sampler import GridSampler, centre_window_start, grid_times, window_times
from monitor.types import SAMPLE_INTERVAL_S, WINDOW_SAMPLES, Sample
from tests.media import decoded_pts, write_clip


def expected_on_screen(pts: list[float], origin: float, times: list[float]) -> list[int]:
    """Index of the frame on screen at each time: last pts <= t, else the first frame."""
    out = []
    for t in times:
        i = bisect.bisect_right(pts, origin + t + 1e-9) - 1
        out.append(max(i, 0))
    return out


def run_centre(path: Path) -> tuple[list[Sample], list[float]]:
    info = probe(path)
    times = window_times(centre_window_start(info.duration_s))
    got: list[Sample] = []
    sample_file(path, {"c": times}, lambda _n, s: got.append(s))
    return got, times


def test_grid_constants() -> None:
    t = window_times(1.0)
    assert len(t) == WINDOW_SAMPLES
    assert t[-1] - t[0] == pytest.approx(2.0)
    assert pytest.approx(0.08695652, abs=1e-8) == SAMPLE_INTERVAL_S
    assert centre_window_start(1.5) == 0.0
    assert centre_window_start(10.0) == pytest.approx(4.0)
    assert len(grid_times(2.0)) == WINDOW_SAMPLES


def test_grid_sampler_picks_last_frame_at_or_before_each_time() -> None:
    s: GridSampler[str] = GridSampler([0.0, 0.1, 0.2, 0.35, 0.5])
    out = []
    for name, pts in [("a", 0.0), ("b", 0.1), ("c", 0.3), ("d", 0.6)]:
        out += s.push(name, pts)
    out += s.finish()
    assert [r.frame for r in out] == ["a", "b", "b", "c", "c"]
    assert [r.repeated for r in out] == [False, False, True, False, True]


def test_grid_times_bounds() -> None:
    assert grid_times(0.0) == [0.0]  # a single frame's clip: one sample
    assert grid_times(0.5, start_s=1.0) == pytest.approx(
        [1.0 + k * SAMPLE_INTERVAL_S for k in range(6)])
    for bad in (-0.1, math.inf, math.nan):
        with pytest.raises(ValueError, match=r"duration must be finite and >= 0, got"):
            grid_times(bad)


def test_grid_sampler_times_before_the_first_frame_are_resolved_at_once() -> None:
    """Sample times before the first frame show the first frame (``before_first``) and
    are returned by the push of that frame; later times wait for the next frame."""
    s: GridSampler[str] = GridSampler([0.0, 0.2, 0.6, 0.9])
    first = s.push("a", 0.5)
    assert [(r.time_s, r.frame, r.frame_index, r.repeated, r.before_first) for r in first] == [
        (0.0, "a", 0, False, True), (0.2, "a", 0, True, True)]
    second = s.push("b", 0.7)
    assert [(r.time_s, r.frame, r.frame_index, r.repeated, r.before_first) for r in second] == [
        (0.6, "a", 0, True, False)]
    rest = s.finish()
    assert [(r.frame, r.frame_index, r.before_first) for r in rest] == [("b", 1, False)]
    assert s.frames_seen == 2 and s.done


def test_grid_sampler_edges_within_the_time_slack() -> None:
    """A frame whose time is a sample time plus the slack shows that sample; a sample at
    the first frame's time is not before it; no sample times at all is no work."""
    eps = 1e-9  # monitor.media.sampler._TIME_EPS_S
    s: GridSampler[str] = GridSampler([0.25, 0.5])
    assert s.push("a", 0.0) == []
    assert s.push("b", 0.25 + eps) == []  # 0.25 belongs to b, not a
    out = s.push("c", 0.75)
    assert [(r.frame, r.frame_index, r.before_first) for r in out] == [
        ("b", 1, False), ("b", 1, False)]
    at_first: GridSampler[str] = GridSampler([0.25])
    assert at_first.push("a", 0.25 + eps) == []
    (r,) = at_first.finish()
    assert (r.frame, r.frame_index, r.before_first) == ("a", 0, False)
    empty: GridSampler[str] = GridSampler([])
    assert empty.done and empty.push("a", 0.0) == [] and empty.finish() == []
    assert empty.frames_seen == 1


@pytest.mark.parametrize(
    ("fps", "n_frames"),
    [(30.0, 150), (25.0, 125), (8.0, 48)],
    ids=["30fps", "25fps", "8fps"],
)
def test_constant_rate_clips(tmp_path: Path, fps: float, n_frames: int) -> None:
    path = tmp_path / f"c{fps}.mp4"
    write_clip(path, fps=fps, n_frames=n_frames)
    pts = decoded_pts(path)
    got, times = run_centre(path)
    want = expected_on_screen(pts, 0.0, times)
    assert [s.frame.index for s in got] == want
    repeats = sum(1 for a, b in itertools.pairwise(want) if a == b)
    assert sum(s.repeated for s in got) == repeats
    if fps >= 11.5:
        assert repeats == 0
    else:
        # 8 fps over a 2 s window: 24 samples land on 17 distinct frames
        assert repeats == WINDOW_SAMPLES - len(set(want)) and repeats > 0
    for s in got:
        assert s.frame.rgb.shape == (48, 64, 3)


def test_variable_frame_rate(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    gaps = rng.choice([1 / 60, 1 / 30, 1 / 15, 0.2], size=80)
    pts_written = np.concatenate([[0.0], np.cumsum(gaps)[:-1]]).round(4).tolist()
    path = tmp_path / "vfr.mkv"
    write_clip(path, fps=30.0, pts_s=pts_written)
    pts = decoded_pts(path)
    assert np.allclose(pts, pts_written, atol=1e-3)
    got, times = run_centre(path)
    assert [s.frame.index for s in got] == expected_on_screen(pts, 0.0, times)


def test_non_zero_start(tmp_path: Path) -> None:
    path = tmp_path / "late.mp4"
    write_clip(path, fps=25.0, pts_s=[5.0 + i / 25 for i in range(150)])
    info = probe(path)
    assert info.origin_s == pytest.approx(5.0, abs=0.05)
    assert info.duration_s == pytest.approx(6.0, abs=0.1)
    got, times = run_centre(path)
    want = expected_on_screen(decoded_pts(path), info.origin_s, times)
    assert [s.frame.index for s in got] == want
    assert got[0].frame.pts_s == pytest.approx(5.0 + 2.0, abs=0.05)  # t0 = 6/2 - 1 = 2 s in


def test_shorter_than_two_seconds_repeats_the_last_frame(tmp_path: Path) -> None:
    path = tmp_path / "short.mp4"
    write_clip(path, fps=30.0, n_frames=36)  # 1.2 s
    got, times = run_centre(path)
    assert times[0] == 0.0
    want = expected_on_screen(decoded_pts(path), 0.0, times)
    assert [s.frame.index for s in got] == want
    assert got[-1].frame.index == 35
    assert sum(s.repeated for s in got) == WINDOW_SAMPLES - len(set(want)) > 0


def test_two_schedules_share_one_decode(tmp_path: Path) -> None:
    path = tmp_path / "two.mp4"
    write_clip(path, fps=30.0, n_frames=120)
    info = probe(path)
    got: dict[str, list[Sample]] = {"c": [], "g": []}
    sample_file(
        path,
        {"c": window_times(centre_window_start(info.duration_s)), "g": grid_times(info.duration_s)},
        lambda n, s: got[n].append(s),
    )
    assert len(got["c"]) == WINDOW_SAMPLES
    assert len(got["g"]) == len(grid_times(info.duration_s))
    by_index = {s.frame.index: s.frame for s in got["c"] + got["g"]}
    for s in got["c"] + got["g"]:
        assert s.frame is by_index[s.frame.index]  # one RGB conversion per frame
