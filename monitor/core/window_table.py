"""The host side of many streams' windows, one batch at a time (SPEC sections 4 and 8).

:class:`WindowTable` is the engine's form of :meth:`~monitor.core.geometry.WindowRing.commit`
and :meth:`~monitor.core.geometry.WindowRing.window_steps` for all its streams at once:
where a ring takes one sample's ``(distance, dot)`` at a time in Python, the table takes
a batch's as arrays and does each step (zero-length steps, cosine, angle, the writes
into every stream's window, the windows due) in a few numpy operations per batch. It
gives the same floats as the ring, bit for bit (the angle is numpy's ``arccos`` in both,
not ``math.acos``, which differs in the last bit on CPUs where numpy vectorises it).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ..types import WINDOW_SAMPLES, FloatArray, check_zero_step_angle

N_D = WINDOW_SAMPLES - 1
N_A = WINDOW_SAMPLES - 2
IntArray = npt.NDArray[np.int64]


class DueWindows:
    """The windows a batch made due, in the batch's sample order: ``rows`` (the sample
    each ends at, an index into the batch), ``distances`` ``(k, 23)`` and ``angles_deg``
    ``(k, 22)`` float64 (rows of fresh arrays, never written again), and per window its
    zero-length steps, repeated samples, first sample's time and its arrival (lists of
    Python numbers)."""

    __slots__ = (
        "angles_deg",
        "distances",
        "first_arrival",
        "repeats",
        "rows",
        "start_s",
        "zero_steps",
    )

    def __init__(self, rows: list[int], distances: FloatArray, angles_deg: FloatArray,
                 zero_steps: list[int], repeats: list[int], start_s: list[float],
                 first_arrival: list[float]) -> None:
        self.rows = rows
        self.distances = distances
        self.angles_deg = angles_deg
        self.zero_steps = zero_steps
        self.repeats = repeats
        self.start_s = start_s
        self.first_arrival = first_arrival


class WindowTable:
    """The window state of every stream of an engine, by slot (the slots of the engine's
    :class:`~monitor.core.geometry.StepTable`), in preallocated numpy arrays.

    Contract: ``commit(slots, positions, steps, times, arrivals, repeated, due)`` takes a
    batch in sample order: each sample's slot, its position in its stream's trajectory
    (1 for a window's first sample, then 2, 3, ...: what the StepTable was given), the
    StepTable's ``(n, 2)`` (distance, dot) for it, its time on the source clock, its
    arrival (monotonic) and whether the sampler marked it repeated, and whether a window
    ends at it (``due``: only at position 24 or later). Several samples of one stream may
    be in a batch, in order. Returns the due windows as :class:`DueWindows`, equal to what
    a :class:`~monitor.core.geometry.WindowRing` per stream (``commit``, then
    ``window_steps``) and the last 24 times / arrivals / 23 repeated flags give.
    ``zero_step_eps`` and ``zero_step_angle_deg`` are the ring's. A slot needs no reset:
    position 1 starts it over. The table grows to any slot it is given.
    """

    def __init__(self, zero_step_eps: float, zero_step_angle_deg: float,
                 capacity: int = 64) -> None:
        self.zero_step_eps = zero_step_eps
        self.zero_step_angle_deg = check_zero_step_angle(zero_step_angle_deg)
        # each ring is written twice (at i and i + size), so that the last ``size`` values
        # are one contiguous run of columns whatever the write position
        self.dist = np.zeros((capacity, 2 * N_D))
        self.zero = np.zeros((capacity, 2 * N_D), dtype=bool)
        self.repeated = np.zeros((capacity, 2 * N_D), dtype=bool)
        self.angle = np.zeros((capacity, 2 * N_A))
        self.times = np.zeros((capacity, WINDOW_SAMPLES))
        self.arrivals = np.zeros((capacity, WINDOW_SAMPLES))
        self.prev_d = np.zeros(capacity)  # the last step of each slot, and whether zero
        self.prev_zero = np.zeros(capacity, dtype=bool)
        self._d_cols = np.arange(N_D)
        self._a_cols = np.arange(N_A)

    def _grow(self, slots: int) -> None:
        cap = len(self.dist)
        while cap < slots:
            cap *= 2
        for name in ("dist", "zero", "repeated", "angle", "times", "arrivals", "prev_d",
                     "prev_zero"):
            old = getattr(self, name)
            new = np.zeros((cap, *old.shape[1:]), dtype=old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)

    def commit(self, slots: list[int], positions: list[int], steps: FloatArray,
               times: list[float], arrivals: list[float], repeated: list[bool],
               due: list[bool]) -> DueWindows:
        """Record a batch and return its due windows (see the class)."""
        n = len(slots)
        if max(slots, default=-1) >= len(self.dist):
            self._grow(max(slots) + 1)
        s = np.array(slots, dtype=np.int64)
        p = np.array(positions, dtype=np.int64)
        t = np.array(times, dtype=np.float64)
        arr = np.array(arrivals, dtype=np.float64)
        rep = np.array(repeated, dtype=bool)
        dv = np.array(due, dtype=bool)
        if len(set(slots)) == n:  # the usual batch: one sample per stream, one round
            return self._round(s, p, steps, t, arr, rep, dv, np.arange(n))
        # several samples of a stream: round r takes each stream's r-th sample of the batch
        seen: dict[int, int] = {}
        occ: list[int] = []
        for x in slots:
            occ.append(seen.get(x, 0))
            seen[x] = occ[-1] + 1
        occurrence = np.array(occ)
        parts = []
        for r in range(int(occurrence.max()) + 1):
            i = np.flatnonzero(occurrence == r)
            parts.append(self._round(s[i], p[i], steps[i], t[i], arr[i], rep[i], dv[i], i))
        rows = np.array([x for part in parts for x in part.rows], dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        return DueWindows(
            rows[order].tolist(),
            np.concatenate([x.distances for x in parts])[order],
            np.concatenate([x.angles_deg for x in parts])[order],
            *(np.array([v for x in parts for v in getattr(x, name)])[order].tolist()
              for name in ("zero_steps", "repeats", "start_s", "first_arrival")),
        )

    def _round(self, s: IntArray, p: IntArray, steps: FloatArray, t: FloatArray,
               arr: FloatArray, rep: npt.NDArray[np.bool_], dv: npt.NDArray[np.bool_],
               rows: IntArray) -> DueWindows:
        """Commit samples of distinct slots (``rows``: their indices in the batch)."""
        d, dot = steps[:, 0], steps[:, 1]
        zero = d < self.zero_step_eps
        # the angle as WindowRing.commit computes it (fmin/fmax: a NaN cosine clips to -1,
        # as Python's min(1, max(-1, nan)) does); rows below position 3 have none
        with np.errstate(divide="ignore", invalid="ignore"):
            cos = np.fmin(1.0, np.fmax(-1.0, dot / (self.prev_d[s] * d)))
            angle = np.where(zero | self.prev_zero[s], self.zero_step_angle_deg,
                             np.degrees(np.arccos(cos)))
        self.prev_d[s] = d
        self.prev_zero[s] = zero
        ts = (p - 1) % WINDOW_SAMPLES
        self.times[s, ts] = t
        self.arrivals[s, ts] = arr
        has_d = p >= 2
        sd, cd = s[has_d], (p[has_d] - 2) % N_D
        for col in (cd, cd + N_D):
            self.dist[sd, col] = d[has_d]
            self.zero[sd, col] = zero[has_d]
            self.repeated[sd, col] = rep[has_d]
        has_a = p >= 3
        sa, ca = s[has_a], (p[has_a] - 3) % N_A
        self.angle[sa, ca] = angle[has_a]
        self.angle[sa, ca + N_A] = angle[has_a]
        # the due windows: the last 23 distances (the oldest at column (p - 1) % 23 of
        # the doubled ring), the last 22 angles, the first of the last 24 times
        sk, pk = s[dv][:, None], p[dv]
        dcols = ((pk - 1) % N_D)[:, None] + self._d_cols
        first = pk % WINDOW_SAMPLES
        return DueWindows(
            rows[dv].tolist(),
            self.dist[sk, dcols],
            self.angle[sk, ((pk - 2) % N_A)[:, None] + self._a_cols],
            self.zero[sk, dcols].sum(axis=1).tolist(),
            self.repeated[sk, dcols].sum(axis=1).tolist(),
            self.times[sk[:, 0], first].tolist(),
            self.arrivals[sk[:, 0], first].tolist(),
        )
