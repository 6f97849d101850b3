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

from ..types import SAMPLE_INTERVAL_S, WINDOW_S, WINDOW_SAMPLES

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


@dataclass(frozen=True, slots=True)
class LiveResolved(Generic[F]):
    """A sample of a live grid: the frame on screen at ``time_s``.

    ``segment`` numbers the gap-free runs of samples (a gap starts a new one);
    ``k`` is the sample's position within its segment (0, 1, 2, ...), so a
    window is valid only over 24 consecutive ``k`` of one segment.
    """

    time_s: float
    frame: F
    frame_index: int
    repeated: bool
    segment: int
    k: int


class LiveSampler(Generic[F]):
    """The open-ended 11.5 Hz grid of a live source, with gap detection (SPEC section 8).

    The grid is anchored at the first frame of each segment: ``t_k = pts_0 + k * dt``.
    ``push(frame, pts_s)`` returns ``(gap_reason, samples)``: the samples the new
    frame resolved (each shown by the frame before it), and, when the frame
    started a new segment, why (``"pts_jump"``: a forward jump beyond
    ``gap_tolerance_s``; ``"pts_backwards"``: time went back, e.g. a restart or
    a looped file). On a gap the pending sample times are discarded, never
    resolved across it. :meth:`gap` ends the segment from outside (reconnect,
    stall, dropped frames); the next frame starts a fresh grid.
    """

    def __init__(self, gap_tolerance_s: float = 0.5, interval_s: float = SAMPLE_INTERVAL_S):
        if gap_tolerance_s <= 0 or interval_s <= 0:
            raise ValueError("gap_tolerance_s and interval_s must be > 0")
        self.gap_tolerance_s = gap_tolerance_s
        self.interval_s = interval_s
        self.segment = -1
        self._cur: F | None = None
        self._cur_pts = 0.0
        self._cur_index = -1
        self._t0 = 0.0
        self._k = 0
        self._last_index: int | None = None
        self._count = 0

    @property
    def frames_seen(self) -> int:
        """Frames pushed so far (all segments)."""
        return self._count

    @property
    def next_time_s(self) -> float | None:
        """The next sample time to resolve, None between segments."""
        return None if self._cur is None else self._t0 + self._k * self.interval_s

    def gap(self) -> None:
        """End the current segment: pending sample times are dropped, the next frame
        anchors a new grid."""
        self._cur = None
        self._last_index = None

    def _start(self, frame: F, pts_s: float) -> None:
        self.segment += 1
        self._t0 = pts_s
        self._k = 0
        self._last_index = None
        self._cur, self._cur_pts, self._cur_index = frame, pts_s, self._count

    def push(self, frame: F, pts_s: float) -> tuple[str | None, list[LiveResolved[F]]]:
        """Add the next frame in arrival order; return (gap reason or None, resolved samples)."""
        if not math.isfinite(pts_s):
            raise ValueError(f"frame time must be finite, got {pts_s}")
        out: list[LiveResolved[F]] = []
        reason: str | None = None
        if self._cur is None:
            self._start(frame, pts_s)
        elif pts_s + _TIME_EPS_S < self._cur_pts:
            reason = "pts_backwards"
            self._start(frame, pts_s)
        elif pts_s - self._cur_pts > self.gap_tolerance_s:
            reason = "pts_jump"
            self._start(frame, pts_s)
        else:
            while True:
                t = self._t0 + self._k * self.interval_s
                if t + _TIME_EPS_S >= pts_s:
                    break
                # positional (time_s, frame, frame_index, repeated, segment, k): a frozen
                # dataclass's keyword call costs a third more, per sample of every stream
                out.append(LiveResolved(t, self._cur, self._cur_index,
                                        self._last_index == self._cur_index,
                                        self.segment, self._k))
                self._last_index = self._cur_index
                self._k += 1
            self._cur, self._cur_pts, self._cur_index = frame, pts_s, self._count
        self._count += 1
        return reason, out
