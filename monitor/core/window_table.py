"""The host side of many streams' windows, one batch at a time (SPEC sections 4 and 8).

:class:`WindowTable` is the engine's form of :meth:`~monitor.core.geometry.WindowRing.commit`
and the steps of :meth:`~monitor.core.geometry.WindowRing.features` for all its streams at once:
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
_LOW23 = (1 << N_D) - 1
_BITS = _LOW23 | (_LOW23 << 32)
_POP12 = np.array([bin(i).count("1") for i in range(1 << 12)], dtype=np.int64)


def _popcount23(x: IntArray) -> list[int]:
    """The set bits of each value below 2**23 (numpy < 2 has no bitwise_count)."""
    out: list[int] = (_POP12[x & 0xFFF] + _POP12[x >> 12]).tolist()
    return out


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
    a :class:`~monitor.core.geometry.WindowRing` per stream (``commit``, then the
    distances, angles and zero-length steps of ``features``) and the last 24 times /
    arrivals / 23 repeated flags give.
    ``zero_step_eps`` and ``zero_step_angle_deg`` are the ring's. A slot needs no reset:
    position 1 starts it over. The table grows to any slot it is given.
    """

    def __init__(self, zero_step_eps: float, zero_step_angle_deg: float,
                 capacity: int = 64) -> None:
        self.zero_step_eps = zero_step_eps
        self.zero_step_angle_deg = check_zero_step_angle(zero_step_angle_deg)
        # rings by slot: the distance of a window's sample p at column (p - 2) % 23, its
        # angle at (p - 3) % 22, its time and arrival at (p - 1) % 24. A window's first
        # sample writes meaningless values into the columns of its samples 24 and 23
        # (negative p - 2, p - 3), which they overwrite before the window is first read
        # (at 24, after its writes).
        self.dist = np.zeros((capacity, N_D))
        # the zero-length and repeated flags of each slot's last 23 steps as bits, newest
        # lowest (zero-length in bits 0-22, repeated in 32-54): a window's count is a
        # popcount; the bit of a window's first sample is shifted out by its 23 steps
        self.bits = np.zeros(capacity, dtype=np.int64)
        self.angle = np.zeros((capacity, N_A))
        self.times = np.zeros((capacity, WINDOW_SAMPLES, 2))  # time, arrival
        self.prev_d = np.zeros(capacity)  # the last step of each slot, and whether zero
        self.prev_zero = np.zeros(capacity, dtype=bool)
        # column offsets of a window ending at p: its oldest distance is at (p - 1) % 23,
        # its oldest angle at (p - 2) % 22, its first time at p % 24
        self._d_cols = np.arange(N_D) - 1
        self._a_cols = np.arange(N_A) - 2

    def _grow(self, slots: int) -> None:
        cap = len(self.dist)
        while cap < slots:
            cap *= 2
        for name in ("dist", "bits", "angle", "times", "prev_d", "prev_zero"):
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
        t = np.array([times, arrivals], dtype=np.float64).T
        rep = np.array(repeated, dtype=bool)
        dv = np.array(due, dtype=bool)
        if len(set(slots)) == n:  # the usual batch: one sample per stream, one round
            return self._round(s, p, steps, t, rep, dv, np.arange(n))
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
            parts.append(self._round(s[i], p[i], steps[i], t[i], rep[i], dv[i], i))
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
               rep: npt.NDArray[np.bool_], dv: npt.NDArray[np.bool_],
               rows: IntArray) -> DueWindows:
        """Commit samples of distinct slots (``rows``: their indices in the batch)."""
        d, dot = steps[:, 0], steps[:, 1]
        zero = d < self.zero_step_eps
        # the angle as WindowRing.commit computes it (fmin/fmax: a NaN cosine clips to -1,
        # as Python's min(1, max(-1, nan)) does); meaningless below position 3
        with np.errstate(divide="ignore", invalid="ignore"):
            cos = np.fmin(1.0, np.fmax(-1.0, dot / (self.prev_d[s] * d)))
            angle = np.where(zero | self.prev_zero[s], self.zero_step_angle_deg,
                             np.degrees(np.arccos(cos)))
        self.prev_d[s] = d
        self.prev_zero[s] = zero
        self.dist[s, (p - 2) % N_D] = d
        self.bits[s] = ((self.bits[s] << 1) & _BITS) | zero | (rep.astype(np.int64) << 32)
        self.angle[s, (p - 3) % N_A] = angle
        self.times[s, (p - 1) % WINDOW_SAMPLES] = t
        if not dv.any():
            return DueWindows([], np.empty((0, N_D)), np.empty((0, N_A)), [], [], [], [])
        # the due windows, oldest value first
        sk, pk = s[dv][:, None], p[dv][:, None]
        dcols = (pk + self._d_cols) % N_D
        bits = self.bits[sk[:, 0]]
        first = self.times[sk[:, 0], pk[:, 0] % WINDOW_SAMPLES].T.tolist()
        return DueWindows(rows[dv].tolist(), self.dist[sk, dcols],
                          self.angle[sk, (pk + self._a_cols) % N_A],
                          _popcount23(bits & _LOW23), _popcount23(bits >> 32),
                          first[0], first[1])
