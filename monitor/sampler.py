"""The 11.5 Hz sample grid and window validity (SPEC sections 1 and 8).

A :class:`GridSampler` turns a sequence of frames in presentation order into
samples: for each sample time ``t_k`` it picks the frame on screen at ``t_k``,
i.e. the last frame whose presentation time is ``<= t_k``. A sample time is
resolved as soon as a later frame arrives (or the source ends), so a live source
adds at most one frame of latency.

The sampler is generic over the frame object: it only needs the frame's time in
seconds, handed in with it, so decoders can keep frames undecoded (no RGB
conversion) until one is actually sampled.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from .types import SAMPLE_INTERVAL_S, WINDOW_S, WINDOW_SAMPLES

F = TypeVar("F")

_TIME_EPS_S = 1e-9
"""Slack when comparing a frame time to a sample time (float rounding of pts)."""


def window_times(t0_s: float) -> list[float]:
    """The 24 sample times of the window starting at ``t0_s``: t0 + k * 2/23 s."""
    return [t0_s + k * SAMPLE_INTERVAL_S for k in range(WINDOW_SAMPLES)]


def centre_window_start(duration_s: float) -> float:
    """t0 of the paper's centred window: max(0, duration/2 - 1 s), relative to the clip start."""
    return max(0.0, duration_s / 2.0 - WINDOW_S / 2.0)


def grid_times(duration_s: float, start_s: float = 0.0) -> list[float]:
    """Every sample time of the 11.5 Hz grid from ``start_s`` up to ``start_s + duration_s``."""
    if duration_s < 0 or not math.isfinite(duration_s):
        raise ValueError(f"duration must be finite and >= 0, got {duration_s}")
    n = math.floor(duration_s / SAMPLE_INTERVAL_S + _TIME_EPS_S) + 1
    return [start_s + k * SAMPLE_INTERVAL_S for k in range(n)]


@dataclass(frozen=True, slots=True)
class Resolved(Generic[F]):
    """A sample time resolved to the frame on screen then.

    ``frame_index`` is the position of the frame in the input order;
    ``repeated`` is True when the previous resolved sample showed the same frame.
    ``before_first`` is True when the time preceded every frame (the first frame
    is used, as a player would show it).
    """

    time_s: float
    frame: F
    frame_index: int
    repeated: bool
    before_first: bool = False


class GridSampler(Generic[F]):
    """Resolves sorted sample times against frames arriving in presentation order.

    ``push(frame, pts_s)`` returns the samples that became resolved;
    ``finish()`` resolves the rest with the last frame (end of a file).
    Frames whose time does not increase are kept (the newer one wins), matching
    a player that shows the last decoded frame.
    """

    def __init__(self, times_s: Iterable[float]) -> None:
        self._times = sorted(times_s)
        self._next = 0
        self._cur: F | None = None
        self._cur_pts = -math.inf
        self._cur_index = -1
        self._last_index: int | None = None
        self._count = 0

    @property
    def done(self) -> bool:
        """True when every sample time has been resolved."""
        return self._next >= len(self._times)

    @property
    def frames_seen(self) -> int:
        """Frames pushed so far."""
        return self._count

    def _emit(self, upto_excl_s: float | None) -> list[Resolved[F]]:
        out: list[Resolved[F]] = []
        while self._next < len(self._times):
            t = self._times[self._next]
            if upto_excl_s is not None and t + _TIME_EPS_S >= upto_excl_s:
                break
            assert self._cur is not None
            before = t + _TIME_EPS_S < self._cur_pts
            out.append(
                Resolved(
                    time_s=t,
                    frame=self._cur,
                    frame_index=self._cur_index,
                    repeated=self._last_index == self._cur_index,
                    before_first=before,
                )
            )
            self._last_index = self._cur_index
            self._next += 1
        return out

    def push(self, frame: F, pts_s: float) -> list[Resolved[F]]:
        """Add the next frame; return the sample times it closed (shown by the previous frame)."""
        out: list[Resolved[F]] = []
        if self._cur is not None:
            out = self._emit(pts_s)
        elif self._times and self._times[0] + _TIME_EPS_S < pts_s:
            # times before the first frame: the first frame is what is on screen
            self._cur, self._cur_pts, self._cur_index = frame, pts_s, 0
            self._count += 1
            return self._emit(pts_s)
        self._cur, self._cur_pts, self._cur_index = frame, pts_s, self._count
        self._count += 1
        return out

    def finish(self) -> list[Resolved[F]]:
        """End of input: resolve every remaining time with the last frame."""
        if self._cur is None:
            return []
        return self._emit(None)
