"""What decoding checks frame by frame: presentation times and the job's bounds.

Contract:

* :class:`TimeGuess` turns each decoded frame's ``(pts, dts)`` into one
  presentation time the way FFmpeg's ``best_effort_timestamp`` does: count the
  times each sequence goes backwards ("faults") and trust the one with fewer
  (pts on a tie). Decoders output frames in display order, so a pts sequence
  that goes backwards (1, 2, 4, 3, 5, 7, 6 ... from an AVI with packed
  B-frames, or a remux that scrambled its timestamps) is the stamps' fault, not
  the order's; decode-order times (dts) are used then. With ``lookahead`` the
  choice for a frame is made after the next ``lookahead`` frames are seen, so
  a file's first frames get the same clock as the rest.
* :class:`DecodeBudget` enforces the bounds *while* decoding, not only from the
  header: frame size (``max_pixels``, a stream may change size mid-way), frame
  count, decoded time span (``max_duration_s``) and process RSS
  (``max_rss_bytes``) raise :class:`~monitor.errors.InputTooLarge`; the wall
  time deadline, checked on every frame and every packet read, raises
  :class:`~monitor.errors.DecodeTimeout`.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from ..errors import DecodeTimeout, InputTooLarge

F = TypeVar("F")

_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_RSS_EVERY_FRAMES = 16


def rss_bytes() -> int:
    """Resident set size of this process (0 where /proc is unavailable)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return 0


class TimeGuess:
    """Best-effort presentation times (see the module docstring)."""

    def __init__(self, time_base: float, default_step_s: float) -> None:
        self.time_base = time_base
        self.step_s = default_step_s
        self.pts_faults = 0
        self.dts_faults = 0
        self._last_pts: int | None = None
        self._last_dts: int | None = None
        self._last_s = -math.inf

    def observe(self, pts: int | None, dts: int | None) -> None:
        """Count whether this frame's pts/dts went backwards."""
        if pts is not None:
            if self._last_pts is not None and pts <= self._last_pts:
                self.pts_faults += 1
            self._last_pts = pts
        if dts is not None:
            if self._last_dts is not None and dts <= self._last_dts:
                self.dts_faults += 1
            self._last_dts = dts

    @property
    def uses_dts(self) -> bool:
        """True when decode-order times are trusted over presentation times: they have
        gone backwards less often, and there are some (a live input whose frames carry
        no dts keeps its pts whatever they do, as FFmpeg's guess does)."""
        return self._last_dts is not None and self.dts_faults < self.pts_faults

    def seconds(self, pts: int | None, dts: int | None) -> float:
        """The time of a frame already :meth:`observe`-d."""
        # with scrambled pts, a frame without a dts (the decoder's last ones) gets no pts
        # either: its pts would be as scrambled as the others'
        chosen = dts if self.uses_dts or pts is None else pts
        if chosen is None:
            # no usable timestamp: one frame time after the previous frame
            t = self._last_s + self.step_s if math.isfinite(self._last_s) else 0.0
        else:
            t = chosen * self.time_base
        self._last_s = t
        return t

    def timed(self, frames: Iterable[F], stamps: Any, lookahead: int) -> Iterator[tuple[F, float]]:
        """Yield ``(frame, seconds)``; ``stamps(frame)`` gives its ``(pts, dts)``."""
        held: deque[tuple[F, int | None, int | None]] = deque()
        for frame in frames:
            pts, dts = stamps(frame)
            self.observe(pts, dts)
            held.append((frame, pts, dts))
            if len(held) > lookahead:
                f, p, d = held.popleft()
                yield f, self.seconds(p, d)
        while held:
            f, p, d = held.popleft()
            yield f, self.seconds(p, d)


class DecodeBudget:
    """Per-frame bounds for one decode (see the module docstring)."""

    def __init__(
        self,
        source: str,
        max_pixels: int,
        max_frames: int,
        max_duration_s: float,
        max_rss_bytes: int,
        deadline: float | None,
    ) -> None:
        self.source = source
        self.max_pixels = max_pixels
        self.max_frames = max_frames
        self.max_duration_s = max_duration_s
        self.max_rss_bytes = max_rss_bytes
        self.deadline = deadline
        self.frames = 0
        self.first_s = math.inf
        self.last_s = -math.inf
        self.packets = 0
        self._prev_s = -math.inf
        self._steps: list[float] = []

    @property
    def fps(self) -> float | None:
        """Frame rate from the decoded frames' times (the median step), None if unknown."""
        if not self._steps:
            return None
        return round(1.0 / statistics.median(self._steps), 6)

    def packet(self, size: int, discard: bool) -> None:
        """Count a demuxed packet that a player would show (not empty, not discarded),
        after checking the deadline (:meth:`check_deadline`) for every packet, counted
        or not: packets that decode to no frame never reach :meth:`frame`."""
        self.check_deadline()
        if not size or discard:
            return
        self.packets += 1

    def check_deadline(self) -> None:
        """Raise :class:`DecodeTimeout` once the job's wall-time deadline has passed."""
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise DecodeTimeout(
                f"{self.source}: not finished within the job's time limit "
                "(decode.job_timeout_s); the file may be hostile or too large"
            )

    def frame(self, width: int, height: int, t_s: float) -> None:
        """Account for one decoded frame; raise when a bound is exceeded."""
        self.frames += 1
        if width * height > self.max_pixels:
            raise InputTooLarge(
                f"{self.source}: a {width}x{height} frame exceeds the limit of "
                f"{self.max_pixels} pixels (decode.max_pixels)"
            )
        if self.frames > self.max_frames:
            raise InputTooLarge(
                f"{self.source}: more than {self.max_frames} frames (decode.max_frames)"
            )
        if math.isfinite(t_s):
            if math.isfinite(self._prev_s) and t_s > self._prev_s and len(self._steps) < 10_000:
                self._steps.append(t_s - self._prev_s)
            self._prev_s = t_s
            self.first_s = min(self.first_s, t_s)
            self.last_s = max(self.last_s, t_s)
            if self.last_s - self.first_s > self.max_duration_s:
                raise InputTooLarge(
                    f"{self.source}: frames span more than {self.max_duration_s:.0f} s "
                    "(decode.max_duration_s)"
                )
        self.check_deadline()
        if self.max_rss_bytes and self.frames % _RSS_EVERY_FRAMES == 1:
            rss = rss_bytes()
            if rss > self.max_rss_bytes:
                raise InputTooLarge(
                    f"{self.source}: decoding took the process to {rss >> 20} MiB, over "
                    f"decode.max_rss_bytes ({self.max_rss_bytes >> 20} MiB)"
                )


__all__ = ["DecodeBudget", "TimeGuess", "rss_bytes"]
