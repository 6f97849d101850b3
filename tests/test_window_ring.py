"""WindowRing: the device-resident sliding window equals the batch reference at every step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monitor.geometry import WindowRing, window_features
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
