"""Scoring-side decoding of one file: probe it, then sample it once, front to back.

Contract:

* :func:`probe` opens a container and returns :class:`~monitor.media.decode_info.VideoInfo`
  (the time origin, duration, size, rotation and codec of its first video stream).
* :func:`sample_file` decodes once, front to back, and returns the frame on
  screen at each requested time as RGB ``uint8`` (rotation metadata applied),
  converting only frames that are actually sampled. Times are seconds relative
  to the clip's time origin (the stream's start time, else its first frame);
  frame times are FFmpeg's best-effort ones (:class:`~monitor.media.decode_guard.TimeGuess`),
  so packed B-frames and scrambled pts do not reorder or repeat frames. The
  bounds of :class:`~monitor.media.decode_info.DecodeLimits` are checked on every
  decoded frame (:class:`~monitor.media.decode_guard.DecodeBudget`), a wall-time
  deadline on every frame and every packet read, and the result reports what
  was decoded (``frames``, ``fps``) next to the header's claims.

Opening (one descriptor, allowlisted demuxers) and FFmpeg itself are behind
:mod:`monitor.media.decode`; this module does not import ``av``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from ..errors import DecodeError, InputTooLarge, NotEnoughFrames
from ..types import Frame, Sample
from .decode import (
    LOOKAHEAD_FRAMES,
    _demux,
    _frames,
    _info,
    _step_s,
    _to_rgb,
    _video_stream,
    open_container,
)
from .decode_guard import DecodeBudget, TimeGuess
from .decode_info import DecodeLimits, MediaSource, VideoInfo, normalise_rotation
from .sampler import GridSampler


def probe(path: MediaSource, limits: DecodeLimits = DecodeLimits()) -> VideoInfo:
    """Open ``path`` and describe its first video stream; decodes nothing when
    the container states its duration and start time."""
    with open_container(path, limits) as (container, source):
        stream = _video_stream(container, source)
        info = _info(container, stream, source, limits)
        if math.isnan(info.duration_s) or math.isnan(info.origin_s):
            info = _measure(container, stream, source, info, limits)
        return info


def _measure(
    container: Any, stream: Any, source: str, info: VideoInfo, limits: DecodeLimits
) -> VideoInfo:
    """Fill a missing origin or duration by reading packet timestamps (no decode)."""
    first = math.inf
    last = -math.inf
    last_dur = 0.0
    budget = DecodeBudget(source, limits.max_pixels, limits.max_frames, math.inf, 0,
                          limits.deadline)
    for packet in _demux(container, stream, source):
        budget.packet(packet.size, packet.is_discard)  # checks the deadline
        if packet.pts is None or packet.time_base is None:
            continue
        t = float(packet.pts * packet.time_base)
        first = min(first, t)
        if t >= last:
            last = t
            last_dur = float(packet.duration * packet.time_base) if packet.duration else 0.0
    if not math.isfinite(first):
        if not budget.packets:
            raise NotEnoughFrames(f"{source}: no video packets")
        # an elementary stream (raw H.264...) has no timestamps: one frame per packet
        first, last, last_dur = 0.0, (budget.packets - 1) * _step_s(stream), _step_s(stream)
    origin = info.origin_s if not math.isnan(info.origin_s) else first
    duration = info.duration_s if not math.isnan(info.duration_s) else last + last_dur - origin
    if duration > limits.max_duration_s:
        raise InputTooLarge(
            f"{source}: {duration:.1f} s exceeds the limit of {limits.max_duration_s:.0f} s"
        )
    return replace(info, duration_s=duration, origin_s=origin)


def _count_rest(container: Any, stream: Any, budget: DecodeBudget) -> None:
    """Count on ``budget`` the packets left after decoding stopped early (a player
    shows one frame per packet; discarded packets of an edit list are not counted)."""
    try:
        for packet in _demux(container, stream, budget.source):
            budget.packet(packet.size, packet.is_discard)  # checks the deadline
    except DecodeError:
        pass  # a damaged tail: the frames counted so far are what is known


def sample_file(
    path: MediaSource,
    schedules: Mapping[str, Sequence[float]],
    on_sample: Callable[[str, Sample], None],
    limits: DecodeLimits = DecodeLimits(),
    info: VideoInfo | None = None,
) -> VideoInfo:
    """Decode ``path`` once, front to back, and resolve several sample schedules.

    ``schedules`` maps a name to sample times (seconds relative to
    ``info.origin_s``); each schedule has its own :class:`GridSampler`, so its
    ``repeated`` flags are its own. ``on_sample(name, sample)`` is called as soon
    as a sample is resolved, in time order within each schedule, so long clips
    stream in constant memory. A frame is converted to RGB once, however many
    samples show it. Decoding stops as soon as every schedule is resolved (the
    remaining frames are then counted from their packets).

    Returns the :class:`VideoInfo` (rotation, decoded frame count and rate filled
    in). Raises :class:`NotEnoughFrames` for inputs of fewer than two frames (a
    still image is not a video), :class:`InputTooLarge` / :class:`DecodeTimeout`
    when a bound of ``limits`` is crossed while decoding, and other
    :class:`DecodeError` subclasses for bad input.
    """
    limits = limits.with_deadline()
    if info is None:
        info = probe(path, limits)
    origin = info.origin_s
    rotation = 0
    with open_container(path, limits) as (container, source):
        stream = _video_stream(container, source)
        stream.thread_type = "AUTO"
        if limits.threads:
            stream.codec_context.thread_count = limits.threads
        samplers: dict[str, GridSampler[Any]] = {
            name: GridSampler(origin + t for t in times) for name, times in schedules.items()
        }
        recent: dict[int, Frame] = {}
        budget = DecodeBudget(source, limits.max_pixels, limits.max_frames,
                              limits.max_duration_s, limits.max_rss_bytes, limits.deadline)

        def deliver(name: str, batch: list[Any]) -> None:
            for r in batch:
                fr = recent.get(r.frame_index)
                if fr is None:
                    av_frame, pts = r.frame
                    fr = Frame(rgb=_to_rgb(av_frame), pts_s=pts, index=r.frame_index)
                    recent[r.frame_index] = fr
                    for old in [k for k in recent if k < r.frame_index - 2]:
                        del recent[old]  # schedules resolve in time order: old frames are done
                on_sample(name, Sample(time_s=r.time_s - origin, frame=fr, repeated=r.repeated))

        guess = TimeGuess(float(stream.time_base) if stream.time_base else 1.0, _step_s(stream))
        stopped_early = False
        for av_frame, pts in _frames(
            container, stream, source, LOOKAHEAD_FRAMES, guess, budget
        ):
            budget.frame(int(av_frame.width), int(av_frame.height), pts)
            rotation = normalise_rotation(getattr(av_frame, "rotation", 0) or 0)
            for name, sampler in samplers.items():
                deliver(name, sampler.push((av_frame, pts), pts))
            if all(sm.done for sm in samplers.values()):
                stopped_early = True
                break
        n = budget.frames
        if n < 2 and not all(sm.done for sm in samplers.values()):
            if n == 0:
                raise NotEnoughFrames(f"{source}: no decodable video frames")
            raise NotEnoughFrames(
                f"{source}: a single frame (a still image?); a video of at least 2 frames is needed"
            )
        for name, sampler in samplers.items():
            deliver(name, sampler.finish())
        if stopped_early:
            # frames decoded ahead or still in the decoder were fed as packets
            _count_rest(container, stream, budget)
            n = budget.packets
    fps = budget.fps or info.fps_header
    info = replace(
        info, frames=n, fps=fps, timestamps="dts" if guess.uses_dts else "pts"
    )
    if rotation:
        swap = rotation % 180 != 0
        info = replace(
            info,
            rotation_deg=rotation,
            width=info.height if swap else info.width,
            height=info.width if swap else info.height,
        )
    return info


__all__ = ["probe", "sample_file"]
