"""Encoding a short clip of sampled frames: H.264 in MP4, each frame at its own time.

Contract: :func:`write_clip` writes RGB ``uint8`` frames with their presentation times
(seconds, increasing) to an MP4 at ``path`` (libx264, yuv420p, millisecond time base,
so a window sampled at 11.5 Hz plays at its real times, repeats and gaps included).
Frames are scaled to the first frame's (even) size. Next to :mod:`monitor.media.decode`,
the only module that imports PyAV; it does so when called, not at import.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

from ..types import RGBArray


def write_clip(path: Path, frames: Sequence[RGBArray], times_s: Sequence[float],
               crf: int = 23) -> None:
    """Encode ``frames`` at ``times_s`` (relative to the first) into the MP4 ``path``.

    Raises ValueError for no frames, mismatched lengths or times that do not increase,
    and OSError when the file cannot be written."""
    import av
    import av.error

    if not frames or len(frames) != len(times_s):
        raise ValueError("write_clip needs as many times as frames, and at least one")
    if any(b <= a for a, b in itertools.pairwise(times_s)):
        raise ValueError("frame times must increase")
    h, w = frames[0].shape[:2]
    w, h = max(2, w // 2 * 2), max(2, h // 2 * 2)
    t0 = times_s[0]
    try:
        with av.open(str(path), mode="w", format="mp4") as out:
            stream = out.add_stream("libx264", options={"crf": str(crf), "preset": "veryfast"})
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.time_base = Fraction(1, 1000)
            stream.codec_context.time_base = Fraction(1, 1000)
            for rgb, t in zip(frames, times_s):
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
                    width=w, height=h, format="yuv420p"
                )
                frame.pts = round((t - t0) * 1000)
                frame.time_base = Fraction(1, 1000)
                out.mux(stream.encode(frame))
            out.mux(stream.encode(None))
    except av.error.FFmpegError as exc:
        if isinstance(exc, OSError):
            raise
        raise OSError(f"writing {path.name}: {exc}") from None
