"""WindowRing: the device-resident sliding window equals the batch reference at every step."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from monitor.core.geometry import ZERO_STEP_EPS, StepTable, WindowRing, window_features
from monitor.types import WINDOW_SAMPLES


def trajectory(n: int, dim: int, seed: int = 0, repeats: tuple[int, ...] = ()) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = np.cumsum(rng.normal(size=(n, dim)), axis=0).astype(np.float32)
    for i in repeats:
        z[i] = z[i - 1]
    return z


@pytest.mark.parametrize("repeats", [(), (5, 6, 30, 31, 32)])
def test_features_equal_batch_reference_at_every_step(repeats: tuple[int, ...]) -> None:
    z = trajectory(70, 300, repeats=repeats)
    ring = WindowRing(300)
    for i in range(len(z)):
        ring.update(torch.from_numpy(z[i]))
        got = ring.features(start_s=float(i))
        if i < WINDOW_SAMPLES - 1:
            assert got is None and not ring.ready
            continue
        ref = window_features(z[i - 23 : i + 1])
        assert got is not None
        np.testing.assert_allclose(got.features, ref.features, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(got.distances, ref.distances, rtol=1e-9)
        np.testing.assert_allclose(got.angles_deg, ref.angles_deg, rtol=1e-9, atol=1e-9)
        assert got.repeated_frames == ref.repeated_frames
        np.testing.assert_array_equal(ring.window().numpy(), z[i - 23 : i + 1])


def test_deferred_commits_and_restart_in_push_order() -> None:
    """Many pushes then one host sync (what the engine does per batch), with a gap inside."""
    z = trajectory(60, 50, seed=1)
    ring = WindowRing(50)
    restart_at = 20
    pushed = []
    for i in range(60):
        pushed.append(ring.push(torch.from_numpy(z[i]), restart=(i == restart_at)))
    for p in pushed:
        ring.commit(None, None) if p is None else ring.commit(float(p[0]), float(p[1]))
    got = ring.features()
    assert got is not None
    ref = window_features(z[60 - 24 :])
    np.testing.assert_allclose(got.features, ref.features, rtol=1e-9)
    assert ring.samples == 60 - restart_at


@pytest.mark.parametrize("batch", [1, 7])
def test_restart_starts_a_new_trajectory_by_its_geometry(batch: int) -> None:
    """After ``push(restart=True)`` no window crosses the gap: the ring is not ready
    until 24 samples of the new trajectory, and then its geometry (features,
    distances, angles, the stored embeddings) is the new trajectory's alone. The
    trajectory before the gap is far away, so a step across it would show. Pushes are
    committed one by one or in batches (the gap inside a batch)."""
    before = trajectory(30, 40, seed=3) + 1000.0
    after = trajectory(40, 40, seed=4)
    ring = WindowRing(40)
    for row in before:
        ring.update(torch.from_numpy(row))
    assert ring.ready
    pending = []
    for i, row in enumerate(after):
        r = ring.push(torch.from_numpy(row), restart=(i == 0))
        pending.append(r)
        if (i + 1) % batch:  # the engine commits a batch of pushes after one sync
            continue
        for p in pending:
            ring.commit(None, None) if p is None else ring.commit(float(p[0]), float(p[1]))
        pending = []
        got = ring.features()
        if i < WINDOW_SAMPLES - 1:
            assert got is None and not ring.ready, i
            continue
        ref = window_features(after[i - 23 : i + 1])
        assert got is not None, i
        np.testing.assert_allclose(got.features, ref.features, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(got.distances, ref.distances, rtol=1e-9)
        np.testing.assert_allclose(got.angles_deg, ref.angles_deg, rtol=1e-9, atol=1e-9)
        np.testing.assert_array_equal(ring.window().numpy(), after[i - 23 : i + 1])


def test_reset_ends_the_window() -> None:
    z = trajectory(30, 20)
    ring = WindowRing(20)
    for row in z:
        ring.update(torch.from_numpy(row))
    assert ring.ready
    ring.reset()
    assert not ring.ready and ring.features() is None
    for row in z[:23]:
        ring.update(torch.from_numpy(row))
    assert not ring.ready


def test_state_is_preallocated() -> None:
    ring = WindowRing(128)
    ptrs = (ring.ring.data_ptr(), ring.steps.data_ptr())
    for row in trajectory(50, 128):
        ring.update(torch.from_numpy(row))
    assert (ring.ring.data_ptr(), ring.steps.data_ptr()) == ptrs
    assert ring.ring.shape == (WINDOW_SAMPLES, 128)


def test_rejects_wrong_width() -> None:
    with pytest.raises(ValueError):
        WindowRing(10).push(torch.zeros(11))


@pytest.mark.cuda
def test_on_cuda_matches_reference() -> None:
    z = trajectory(40, 1000, seed=7)
    ring = WindowRing(1000, "cuda")
    for row in z:
        ring.update(torch.from_numpy(row).cuda())
    got = ring.features()
    assert got is not None and ring.ring.device.type == "cuda"
    np.testing.assert_allclose(got.features, window_features(z[-24:]).features, rtol=1e-7)


def test_a_fresh_ring_is_empty() -> None:
    ring = WindowRing(4)
    assert ring.samples == 0 and not ring.ready and ring.features() is None
    assert ring.window().shape == (0, 4)


def test_update_reports_each_step_and_nothing_for_a_first_sample() -> None:
    """update() returns None for the first sample of a window (after construction and
    after reset), then the step's distance, its angle from the second step on, and
    whether it is a zero step (shorter than the epsilon, which itself is not)."""
    ring = WindowRing(2)
    for _ in range(2):
        assert ring.update(torch.tensor([0.0, 0.0])) is None
        g1 = ring.update(torch.tensor([3.0, 4.0]))
        assert g1 is not None and (g1.distance, g1.angle_deg, g1.zero_step) == (5.0, None, False)
        g2 = ring.update(torch.tensor([3.0, 8.0]))
        assert g2 is not None and g2.distance == 4.0 and not g2.zero_step
        assert g2.angle_deg == pytest.approx(math.degrees(math.acos(0.8)))
        g3 = ring.update(torch.tensor([3.0, 8.0]))
        assert g3 is not None and (g3.distance, g3.angle_deg, g3.zero_step) == (0.0, 0.0, True)
        ring.reset()
    eps_ring = WindowRing(1, ring_dtype=torch.float64)
    eps_ring.update(torch.tensor([0.0], dtype=torch.float64))
    g = eps_ring.update(torch.tensor([ZERO_STEP_EPS], dtype=torch.float64))
    assert g is not None and g.distance == ZERO_STEP_EPS and not g.zero_step


def test_rounding_past_a_cosine_of_one_gives_0_and_180_degrees_not_nan() -> None:
    """Collinear steps whose cosine rounds to just above 1 (or below -1) must be clamped:
    arccos of it would be NaN. The rounding is given exactly through commit() (the host
    half of update), since which vectors round past 1 depends on the CPU's BLAS kernels;
    then real collinear vectors through update() on this CPU."""
    over = 1.0 + 2.0**-52  # the float after 1.0
    for dot, angle in ((over, 0.0), (-over, 180.0)):
        ring = WindowRing(8, ring_dtype=torch.float64)
        assert ring.commit(None, None) is None
        ring.commit(1.0, 0.0)
        g = ring.commit(1.0, dot)
        assert g is not None and g.angle_deg == angle, (dot, g)
    for seed in range(200):
        v = torch.from_numpy(np.random.default_rng(seed).normal(size=8))
        for third, angle in ((2 * v, 0.0), (0 * v, 180.0)):
            ring = WindowRing(8, ring_dtype=torch.float64)
            ring.update(0 * v)
            ring.update(v)
            g = ring.update(third)
            assert g is not None and g.angle_deg is not None, (seed, g)
            assert abs(g.angle_deg - angle) < 1e-5, (seed, g)  # never NaN, never off


def test_the_window_before_it_is_full_and_a_float64_ring() -> None:
    z = trajectory(30, 6, seed=5).astype(np.float64) + 1e-12  # not representable in float32
    ring = WindowRing(6, ring_dtype=torch.float64)
    assert ring.steps.shape == (2, 6) and ring.ring.dtype == torch.float64
    for i, row in enumerate(z):
        ring.update(torch.from_numpy(row))
        want = z[max(0, i - WINDOW_SAMPLES + 1) : i + 1]
        np.testing.assert_array_equal(ring.window().numpy(), want)
    got = ring.features(start_s=3.0)
    assert got is not None and got.start_s == 3.0
    default = ring.features()
    assert default is not None and default.start_s == 0.0


def test_wrong_width_is_named() -> None:
    with pytest.raises(ValueError, match="embedding has 5 values, expected 4"):
        WindowRing(4).push(torch.zeros(5))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_step_table_gives_what_each_streams_ring_gives(seed: int) -> None:
    """Interleaved streams, several samples of a stream in one batch, restarts, batches
    of any size, a slot freed and reused: the batched update equals one ring per stream."""
    _step_table_against_rings(seed, "cpu")


@pytest.mark.cuda
def test_the_step_table_on_cuda_gives_what_each_streams_ring_gives() -> None:
    _step_table_against_rings(0, "cuda")


def _step_table_against_rings(seed: int, device: str) -> None:
    rng = np.random.default_rng(seed)
    dim, streams = 16, 5
    table = StepTable(dim, device, capacity=2)  # grows while streams are added
    slots = [table.add() for _ in range(streams)]
    rings = [WindowRing(dim, device) for _ in range(streams)]
    pos = [0] * streams
    for batch_no in range(40):
        n = int(rng.integers(1, 12))
        who = [int(rng.integers(0, streams)) for _ in range(n)]
        if batch_no == 20:  # stream 0 goes; a new stream takes a slot (maybe its old one)
            table.remove(slots[0])
            slots[0], rings[0], pos[0] = table.add(), WindowRing(dim, device), 0
        z = torch.from_numpy(rng.normal(size=(n, dim))).to(device)
        restarts = [bool(rng.random() < 0.1) for _ in range(n)]
        positions, expected = [], []
        for i, s in enumerate(who):
            pos[s] = 1 if restarts[i] or pos[s] == 0 else pos[s] + 1
            positions.append(pos[s])
            r = rings[s].push(z[i], restart=pos[s] == 1)
            expected.append(None if r is None else (float(r[0]), float(r[1])))
        got = table.push(z, [slots[s] for s in who], positions).cpu().numpy()
        for i, exp in enumerate(expected):
            if exp is None:
                assert positions[i] == 1
                continue
            assert got[i, 0] == pytest.approx(exp[0], rel=1e-12)
            if positions[i] >= 3:
                assert got[i, 1] == pytest.approx(exp[1], rel=1e-9, abs=1e-12)


def test_the_step_table_checks_the_batch_shape() -> None:
    table = StepTable(4)
    with pytest.raises(ValueError, match="expected"):
        table.push(torch.zeros(2, 5), [table.add(), table.add()], [1, 1])


@pytest.mark.parametrize("seed", [0, 1])
def test_the_step_tables_per_stream_path_equals_its_general_path(seed: int) -> None:
    """Batches of distinct streams (StepTable._push_distinct) give the general path's
    floats and leave the same table, bit for bit; the stale dot of a row below position 3
    is the only difference the class allows."""
    _per_stream_path_against_general(seed, "cpu")


@pytest.mark.cuda
def test_the_step_tables_per_stream_path_equals_its_general_path_on_cuda() -> None:
    _per_stream_path_against_general(0, "cuda")


def _per_stream_path_against_general(seed: int, device: str) -> None:
    rng = np.random.default_rng(seed)
    dim, streams = 32, 40
    fast, general = StepTable(dim, device, capacity=4), StepTable(dim, device, capacity=4)
    slots = [fast.add() for _ in range(streams)]
    assert slots == [general.add() for _ in range(streams)]
    pos = [0] * streams
    for _ in range(60):
        who = rng.permutation(streams)[: rng.integers(1, streams + 1)].tolist()
        z = torch.from_numpy(rng.normal(size=(len(who), dim)).astype(np.float32)).to(device)
        for s in who:
            pos[s] = 1 if pos[s] == 0 or rng.random() < 0.05 else pos[s] + 1
        positions = [pos[s] for s in who]
        a = fast.push(z, [slots[s] for s in who], positions).cpu().numpy()
        b = general._push_general(z, [slots[s] for s in who], positions).cpu().numpy()
        p = np.array(positions)
        assert a[p >= 2, 0].tobytes() == b[p >= 2, 0].tobytes()
        assert a[p >= 3, 1].tobytes() == b[p >= 3, 1].tobytes()
        assert torch.equal(fast.last_z, general.last_z)
        assert torch.equal(fast.last_step, general.last_step)
