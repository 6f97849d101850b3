"""What decoding is bounded by and what it reports (no ``av`` here; see monitor.media.decode).

* :class:`DecodeLimits`: the bounds and timeouts every input is decoded under.
* :class:`VideoInfo`: a video's header facts next to what decoding found.
* :data:`MediaSource`: what decoding accepts (a path, a URL, an opened file).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .safe_input import DEFAULT_FORMATS, OpenedFile

MediaSource = str | Path | OpenedFile
"""A local path, a URL (live inputs, tests) or a file opened by :func:`open_local`."""


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """Bounds and timeouts applied to every input (see ``DecodeSettings``).

    ``job_timeout_s`` bounds the wall time of scoring one file (0: none);
    ``deadline`` is that bound as a ``time.monotonic()`` instant, set per job.
    ``max_rss_bytes`` (0: none) fails a decode whose process grows past it.
    """

    open_timeout_s: float = 10.0
    read_timeout_s: float = 10.0
    max_file_bytes: int = 2 * 1024**3
    max_duration_s: float = 4 * 3600.0
    max_pixels: int = 8192 * 8192
    threads: int = 0
    allowed_formats: tuple[str, ...] = DEFAULT_FORMATS
    max_frames: int = 2_000_000
    job_timeout_s: float = 0.0
    max_rss_bytes: int = 0
    deadline: float | None = None

    def with_deadline(self) -> DecodeLimits:
        """These limits with ``deadline`` set from ``job_timeout_s``, starting now
        (unchanged when a deadline is already set or there is no timeout)."""
        if self.deadline is not None or self.job_timeout_s <= 0:
            return self
        return replace(self, deadline=time.monotonic() + self.job_timeout_s)


@dataclass(frozen=True, slots=True)
class VideoInfo:
    """What a container says about its first video stream, and what decoding found.

    ``origin_s`` is the presentation time that sample time 0 refers to;
    ``duration_s`` is measured from it. ``width``/``height`` are after rotation;
    ``rotation_deg`` is 0, 90, 180 or 270 (counter-clockwise, for display).
    ``frames``/``fps`` are the decoded frame count and the rate from their times
    (the median step) once :func:`sample_file` ran (when decoding stopped after
    the last sample, the rest is counted from the demuxed packets);
    ``frames_header``/``fps_header`` are the container's claims (an edit list or a
    rounded rate makes them differ).
    """

    format: str
    codec: str
    width: int
    height: int
    fps: float | None
    duration_s: float
    origin_s: float
    rotation_deg: int
    frames: int | None
    frames_header: int | None = None
    fps_header: float | None = None
    timestamps: str = "pts"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return {
            "format": self.format,
            "codec": self.codec,
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
            "duration_s": self.duration_s,
            "origin_s": self.origin_s,
            "rotation_deg": self.rotation_deg,
            "frames": self.frames,
            "frames_header": self.frames_header,
            "fps_header": self.fps_header,
            "timestamps": self.timestamps,
        }


def normalise_rotation(deg: float) -> int:
    """A display rotation as 0, 90, 180 or 270 (FFmpeg says -90 for a 270 tag)."""
    return round(deg / 90.0) * 90 % 360


def source_name(path: MediaSource) -> str:
    """The name messages use for ``path``."""
    return str(path.path) if isinstance(path, OpenedFile) else str(path)


__all__ = ["DecodeLimits", "MediaSource", "VideoInfo", "normalise_rotation", "source_name"]
