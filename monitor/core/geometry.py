"""Trajectory geometry and the 21 ReStraV features (SPEC sections 4, 5 and 8).

Pure math, no I/O. Two forms that must agree to float tolerance:

* :func:`window_features` takes a whole window ``z`` of shape ``(24, D)`` and
  computes everything in float64 (the batch reference of the product).
* :class:`WindowRing` takes one embedding at a time (``update(z)``, or
  ``push``/``commit`` to batch the host synchronisation over many streams), adds
  one distance and one angle from the previous embedding and step, and returns
  the features of the last 24 samples with ``features()``. Its state (a ring of
  the window's embeddings and the last two steps) is preallocated on the device.

Zero-length steps (repeated frames): a step shorter than ``zero_step_eps`` (in
embedding units) is counted in ``repeated_frames`` and gives both angles it touches
the convention's value ``zero_step_angle_deg``: 0 degrees by default (SPEC section
4), or 90 degrees, what the upstream code computes and what a classifier trained on
its features expects (:data:`~monitor.types.ZERO_STEP_ANGLES_DEG`). Every function
and the ring take the convention as a parameter; callers pass the one of the
classifier they apply (:func:`~monitor.types.zero_step_angle_of`).
"""

from __future__ import annotations

from collections import deque

import numpy as np
import numpy.typing as npt
import torch

from ..types import (
    N_FEATURES,
    WINDOW_SAMPLES,
    FloatArray,
    StepGeometry,
    WindowFeatures,
    check_zero_step_angle,
)

ZERO_STEP_EPS = 1e-6
"""Steps shorter than this (L2, embedding units) count as repeated frames."""

N_DISTANCES = WINDOW_SAMPLES - 1
N_ANGLES = WINDOW_SAMPLES - 2


def features_from_steps(distances: FloatArray, angles_deg: FloatArray) -> FloatArray:
    """Reduce 23 distances and 22 angles (degrees) to the 21 features, float64.

    Order (SPEC section 5): d_0..d_6, theta_0..theta_5, then mean/min/max/population
    variance of all distances, then the same of all angles.
    """
    d = np.asarray(distances, dtype=np.float64)
    a = np.asarray(angles_deg, dtype=np.float64)
    if d.shape != (N_DISTANCES,) or a.shape != (N_ANGLES,):
        raise ValueError(
            f"need {N_DISTANCES} distances and {N_ANGLES} angles, got {d.shape} and {a.shape}"
        )
    out = np.empty(N_FEATURES, dtype=np.float64)
    out[0:7] = d[:7]
    out[7:13] = a[:6]
    out[13:17] = (d.mean(), d.min(), d.max(), d.var())
    out[17:21] = (a.mean(), a.min(), a.max(), a.var())
    return out


def features_from_steps_batch(distances: FloatArray, angles_deg: FloatArray) -> FloatArray:
    """:func:`features_from_steps` of ``k`` windows at once (one numpy call per reduction
    instead of one per window): ``(k, 23)`` distances and ``(k, 22)`` angles (degrees)
    give ``(k, 21)`` features, each row equal to :func:`features_from_steps` of its row."""
    d = np.asarray(distances, dtype=np.float64)
    a = np.asarray(angles_deg, dtype=np.float64)
    if d.ndim != 2 or d.shape[1:] != (N_DISTANCES,) or a.shape != (d.shape[0], N_ANGLES):
        raise ValueError(
            f"need (k, {N_DISTANCES}) distances and (k, {N_ANGLES}) angles, "
            f"got {d.shape} and {a.shape}"
        )
    out = np.empty((d.shape[0], N_FEATURES), dtype=np.float64)
    out[:, 0:7] = d[:, :7]
    out[:, 7:13] = a[:, :6]
    for col, x in ((13, d), (17, a)):
        out[:, col] = x.mean(axis=1)
        out[:, col + 1] = x.min(axis=1)
        out[:, col + 2] = x.max(axis=1)
        out[:, col + 3] = x.var(axis=1)
    return out


def trajectory_steps(
    z: npt.ArrayLike, zero_step_eps: float = ZERO_STEP_EPS, zero_step_angle_deg: float = 0.0
) -> tuple[FloatArray, FloatArray, int]:
    """Distances, turning angles (degrees) and zero-step count of a trajectory.

    ``z`` is ``(T, D)``; the result has ``T-1`` distances and ``T-2`` angles,
    computed in float64 whatever the input precision. An angle next to a step
    shorter than ``zero_step_eps`` is ``zero_step_angle_deg`` (0 or 90).
    """
    zero_angle = check_zero_step_angle(zero_step_angle_deg)
    zz = np.asarray(z, dtype=np.float64)
    if zz.ndim != 2 or zz.shape[0] < 3:
        raise ValueError(f"z must be (T>=3, D), got shape {zz.shape}")
    steps = np.diff(zz, axis=0)
    d = np.linalg.norm(steps, axis=1)
    zero = d < zero_step_eps
    dots = np.einsum("ij,ij->i", steps[:-1], steps[1:])
    denom = d[:-1] * d[1:]
    safe = ~(zero[:-1] | zero[1:])
    cos = np.zeros_like(dots)
    cos[safe] = np.clip(dots[safe] / denom[safe], -1.0, 1.0)
    theta = np.where(safe, np.degrees(np.arccos(cos)), zero_angle)
    return d, theta, int(zero.sum())


def window_features(
    z: npt.ArrayLike,
    zero_step_eps: float = ZERO_STEP_EPS,
    start_s: float = 0.0,
    zero_step_angle_deg: float = 0.0,
) -> WindowFeatures:
    """The 21 features of one window ``z`` of shape ``(24, D)``, in float64.

    Returns a :class:`WindowFeatures` with the features, the count of repeated
    frames (zero-length steps), the raw distances and angles, and the convention
    ``zero_step_angle_deg`` they were computed in.
    """
    zz = np.asarray(z)
    if zz.ndim != 2 or zz.shape[0] != WINDOW_SAMPLES:
        raise ValueError(f"a window is ({WINDOW_SAMPLES}, D), got shape {zz.shape}")
    d, theta, repeats = trajectory_steps(zz, zero_step_eps, zero_step_angle_deg)
    return WindowFeatures(
        features=features_from_steps(d, theta),
        repeated_frames=repeats,
        start_s=start_s,
        distances=d,
        angles_deg=theta,
        zero_step_angle_deg=float(zero_step_angle_deg),
    )


class WindowRing:
    """Device-resident state of one stream's sliding window (SPEC section 8).

    One preallocated ``(24, D)`` ring of the window's embeddings (``ring_dtype``,
    float32 by default) and a preallocated ``(2, D)`` float64 pair of step
    buffers live on ``device``; nothing is allocated per sample. Each new sample
    costs O(D) on the device: the step from the previous embedding, its norm and
    its dot product with the previous step, left on the device as two scalars
    so that a caller can update many rings and synchronise once
    (:meth:`push` then :meth:`commit`). The last 23 distances and 22 angles are
    kept on the host; :meth:`features` reduces them to the 21 features.

    Contract: ``push(z, restart)`` returns the device scalars ``(d, dot)`` (None
    for the first sample of a window); ``commit(d, dot)`` records them, as host
    floats, in the same order, so many pushes may precede their commits.
    ``reset()`` ends the window at once (a gap); ``push(z, restart=True)`` ends
    it in push order. ``window()`` returns
    the 24 embeddings of the current window, oldest first (a copy).
    ``zero_step_angle_deg`` is the feature convention (0 or 90, see the module
    docstring), fixed for the ring's life.
    """

    def __init__(
        self,
        dim: int,
        device: torch.device | str = "cpu",
        zero_step_eps: float = ZERO_STEP_EPS,
        ring_dtype: torch.dtype = torch.float32,
        zero_step_angle_deg: float = 0.0,
    ) -> None:
        self.dim = dim
        self.device = torch.device(device)
        self.zero_step_eps = zero_step_eps
        self.zero_step_angle_deg = check_zero_step_angle(zero_step_angle_deg)
        self.ring = torch.zeros(WINDOW_SAMPLES, dim, dtype=ring_dtype,
                                device=self.device)
        self.steps = torch.zeros(2, dim, dtype=torch.float64,
                                 device=self.device)
        self._head = -1  # ring slot of the newest embedding
        self._cur_step = 0  # steps slot the next step is written to
        self._n = 0  # samples pushed since reset
        self._committed = 0  # samples whose geometry is committed
        self._d: deque[float] = deque(maxlen=N_DISTANCES)
        self._a: deque[float] = deque(maxlen=N_ANGLES)
        self._zero: deque[bool] = deque(maxlen=N_DISTANCES)
        self._prev_d = 0.0

    @property
    def samples(self) -> int:
        """Samples committed since the last reset."""
        return self._committed

    @property
    def ready(self) -> bool:
        """True once the committed samples fill a window."""
        return self._committed >= WINDOW_SAMPLES

    def reset(self) -> None:
        """End the window; the next push starts a new trajectory."""
        self._n = 0
        self._committed = 0
        self._d.clear()
        self._a.clear()
        self._zero.clear()

    def push(
        self, z: torch.Tensor, restart: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Store one embedding ``(D,)`` in the ring; return the device scalars
        ``(distance, dot with previous step)``, or None for a window's first sample.

        ``restart=True`` makes this sample the first of a new window (a gap).
        """
        zf = z.reshape(-1)
        if zf.numel() != self.dim:
            raise ValueError(f"embedding has {zf.numel()} values, expected {self.dim}")
        if restart:
            self._n = 0
        prev = self._head
        self._head = (self._head + 1) % WINDOW_SAMPLES
        self._n += 1
        if self._n == 1:
            self.ring[self._head].copy_(zf)
            return None
        self.ring[self._head].copy_(zf)
        step = self.steps[self._cur_step]
        # both ends of the step as stored (ring dtype), so float64 input is treated
        # the same as float32 embeddings
        step.copy_(self.ring[self._head])
        step.sub_(self.ring[prev])
        # one matrix-vector product gives |step|^2 and <previous step, step> in a
        # single pass over D (a separate norm and dot read it twice; and torch.dot on
        # a busy multi-core CPU can stall for milliseconds in BLAS threading)
        prods = torch.mv(self.steps, step)
        d = prods[self._cur_step].clamp_min(0.0).sqrt()
        dot = prods[1 - self._cur_step]
        self._cur_step = 1 - self._cur_step
        return d, dot

    def commit(self, d: float | None, dot: float | None) -> StepGeometry | None:
        """Record the host values of the scalars :meth:`push` returned, in push order.

        ``None`` (what push returns for a first sample) starts a new window here too.
        """
        if d is None or dot is None:
            self._d.clear()
            self._a.clear()
            self._zero.clear()
            self._committed = 1
            return None
        self._committed += 1
        zero = d < self.zero_step_eps
        angle: float | None = None
        if self._committed >= 3:
            if zero or self._zero[-1]:
                angle = self.zero_step_angle_deg
            else:
                cos = min(1.0, max(-1.0, dot / (self._prev_d * d)))
                angle = float(np.degrees(np.arccos(cos)))
            self._a.append(angle)
        self._d.append(d)
        self._zero.append(zero)
        self._prev_d = d
        return StepGeometry(distance=d, angle_deg=angle, zero_step=zero)

    def update(self, z: torch.Tensor) -> StepGeometry | None:
        """``push`` and ``commit`` in one call (synchronises with the device)."""
        r = self.push(z)
        if r is None:
            return self.commit(None, None)
        return self.commit(float(r[0]), float(r[1]))

    def features(self, start_s: float = 0.0) -> WindowFeatures | None:
        """The 21 features of the last 24 samples, or None before the window is full."""
        if not self.ready:
            return None
        d = np.fromiter(self._d, dtype=np.float64, count=N_DISTANCES)
        a = np.fromiter(self._a, dtype=np.float64, count=N_ANGLES)
        return WindowFeatures(
            features=features_from_steps(d, a),
            repeated_frames=int(sum(self._zero)),
            start_s=start_s,
            distances=d,
            angles_deg=a,
            zero_step_angle_deg=self.zero_step_angle_deg,
        )

    def window(self) -> torch.Tensor:
        """The embeddings of the current window, oldest first, ``(min(n, 24), D)`` (a copy)."""
        n = min(self._n, WINDOW_SAMPLES)
        idx = [(self._head - n + 1 + i) % WINDOW_SAMPLES for i in range(n)]
        return self.ring[torch.tensor(idx, dtype=torch.long, device=self.device)]


class StepTable:
    """The device side of many streams' rings, updated one batch at a time: the engine's
    form of :meth:`WindowRing.push` (a few tensor operations per batch, not several per
    sample; one ``(D,)`` embedding and one float64 step per stream instead of a
    ``(24, D)`` ring).

    Contract: each stream holds a slot (:meth:`add`, :meth:`remove`).
    ``push(z, slots, positions)`` takes a batch's embeddings ``(n, D)`` in sample order,
    each sample's slot, and its position in its stream's trajectory (1 for the first
    sample of a window, then 2, 3, ...; several samples of one stream may be in a
    batch, in order), and returns ``(n, 2)`` float64 on the device: per sample the step
    distance and its dot product with the previous step, exactly what
    :meth:`WindowRing.push` returns for the same sequence (row values are meaningless
    for position 1, and the dot for position 2), to be committed in order with
    :meth:`WindowRing.commit` (or a batch at once with
    :class:`~monitor.core.window_table.WindowTable`). Steps are taken between embeddings
    as stored (``ring_dtype``) in float64, as the ring does.
    """

    def __init__(self, dim: int, device: torch.device | str = "cpu",
                 ring_dtype: torch.dtype = torch.float32, capacity: int = 64) -> None:
        self.dim = dim
        self.device = torch.device(device)
        self.last_z = torch.zeros(capacity, dim, dtype=ring_dtype, device=self.device)
        self.last_step = torch.zeros(capacity, dim, dtype=torch.float64, device=self.device)
        self._free = list(range(capacity - 1, -1, -1))

    def add(self) -> int:
        """A free slot (the table doubles when full)."""
        if not self._free:
            n = len(self.last_z)
            self.last_z = torch.cat([self.last_z, torch.zeros_like(self.last_z)])
            self.last_step = torch.cat([self.last_step, torch.zeros_like(self.last_step)])
            self._free = list(range(2 * n - 1, n - 1, -1))
        return self._free.pop()

    def remove(self, slot: int) -> None:
        """Free ``slot`` (its stream is gone)."""
        self._free.append(slot)

    def push(self, z: torch.Tensor, slots: list[int], positions: list[int]) -> torch.Tensor:
        """The batch's ``(n, 2)`` (distance, dot with the previous step); see the class.

        A batch with one sample per stream (the usual case) takes 12 tensor operations,
        one host-to-device index copy included; one with several samples of a stream
        gathers their previous rows within the batch (a few more). Both give the same
        floats for every row that is defined."""
        n = len(slots)
        if z.shape != (n, self.dim):
            raise ValueError(f"embeddings {tuple(z.shape)}, expected ({n}, {self.dim})")
        if len(set(slots)) == n:
            return self._push_distinct(z, slots)
        return self._push_general(z, slots, positions)

    def _push_distinct(self, z: torch.Tensor, slots: list[int]) -> torch.Tensor:
        """:meth:`push` of a batch whose samples are of distinct streams: each previous
        embedding and step is the table's (the dot of a row below position 3 is then the
        slot's stale step's: meaningless, as the class says)."""
        zr = z if z.dtype == self.last_z.dtype else z.to(self.last_z.dtype)
        idx = torch.tensor(slots, dtype=torch.long, device=self.device)
        # float64 minus the stored dtype promotes exactly: as if converted first
        steps = zr.to(torch.float64) - self.last_z.index_select(0, idx)
        before = self.last_step.index_select(0, idx)
        # a sum of squares is never below 0 (the general path's clamp leaves it as it is)
        out = torch.stack([(steps * steps).sum(1).sqrt_(), (steps * before).sum(1)], dim=1)
        self.last_z.index_copy_(0, idx, zr)
        self.last_step.index_copy_(0, idx, steps)
        return out

    def _push_general(self, z: torch.Tensor, slots: list[int],
                      positions: list[int]) -> torch.Tensor:
        """:meth:`push` of any batch (several samples of a stream in order)."""
        n = len(slots)
        # where each sample's previous embedding and previous step are: an earlier row of
        # the batch (same slot), else row n + k of the table rows gathered below
        last_row: dict[int, int] = {}
        table: list[int] = []
        prev = [0] * n
        prev_step = [0] * n
        for i, (slot, pos) in enumerate(zip(slots, positions)):
            j = last_row.get(slot)
            if j is None:
                j = n + len(table)
                table.append(slot)
            prev[i] = j
            prev_step[i] = j if pos >= 3 else i  # unused below position 3
            last_row[slot] = i
        # every index list in one host-to-device copy: table | prev | prev_step | rows | keys
        t, k = len(table), len(last_row)
        idx = torch.tensor(table + prev + prev_step + list(last_row.values())
                           + list(last_row.keys()), dtype=torch.long, device=self.device)
        t_idx, prev_idx = idx[:t], idx[t : t + n]
        step_idx, rows, keys = idx[t + n : t + 2 * n], idx[t + 2 * n : t + 2 * n + k], idx[-k:]
        zr = z.to(self.last_z.dtype)
        z64 = zr.to(torch.float64)
        all_z = torch.cat([z64, self.last_z.index_select(0, t_idx).to(torch.float64)])
        steps = z64 - all_z.index_select(0, prev_idx)
        all_steps = torch.cat([steps, self.last_step.index_select(0, t_idx)])
        before = all_steps.index_select(0, step_idx)
        out = torch.stack([(steps * steps).sum(1).clamp_min_(0.0).sqrt_(),
                           (steps * before).sum(1)], dim=1)
        # each slot keeps its last sample's embedding and step for the next batch
        self.last_z.index_copy_(0, keys, zr.index_select(0, rows))
        self.last_step.index_copy_(0, keys, steps.index_select(0, rows))
        return out
