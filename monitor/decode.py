"""Decoding with PyAV: the only module that imports ``av``.

Contract:

* :func:`check_file` rejects what is not worth opening (missing, not a regular
  file, empty, over the size bound) with a typed :class:`~monitor.errors.InputError`.
* :func:`probe` opens a container and returns :class:`VideoInfo` (the time
  origin, duration, size, rotation and codec of its first video stream).
* :func:`sample_file` decodes once, front to back, and returns the frame on
  screen at each requested time as RGB ``uint8`` (rotation metadata applied),
  converting only frames that are actually sampled. Times are seconds relative
  to the clip's time origin (the stream's start time, else its first frame).

Every FFmpeg failure becomes a :class:`~monitor.errors.DecodeError` subclass
with a message that says what was wrong with the input.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import av
import av.error
import numpy as np

from .errors import (
    DecodeError,
    DecodeTimeout,
    EmptyInput,
    InputTooLarge,
    NotAFile,
    NotEnoughFrames,
    NoVideoStream,
    SourceNotFound,
)
from .sampler import GridSampler
from .types import Frame, RGBArray, Sample


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    """Bounds and timeouts applied to every input (see ``DecodeSettings``)."""

    open_timeout_s: float = 10.0
    read_timeout_s: float = 10.0
    max_file_bytes: int = 2 * 1024**3
    max_duration_s: float = 4 * 3600.0
    max_pixels: int = 8192 * 8192
    threads: int = 0


@dataclass(frozen=True, slots=True)
class VideoInfo:
    """What a container says about its first video stream.

    ``origin_s`` is the presentation time that sample time 0 refers to;
    ``duration_s`` is measured from it. ``width``/``height`` are after rotation.
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
        }


def check_file(path: Path, limits: DecodeLimits) -> None:
    """Raise a typed error unless ``path`` is a non-empty regular file within bounds."""
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise SourceNotFound(f"{path}: no such file; check the path") from exc
    except OSError as exc:
        raise SourceNotFound(f"{path}: cannot stat ({exc.strerror})") from exc
    if stat.S_ISDIR(st.st_mode):
        raise NotAFile(f"{path}: is a directory; pass video files, not folders")
    if not stat.S_ISREG(st.st_mode):
        raise NotAFile(f"{path}: not a regular file")
    if st.st_size == 0:
        raise EmptyInput(f"{path}: file is empty (0 bytes)")
    if st.st_size > limits.max_file_bytes:
        raise InputTooLarge(
            f"{path}: {st.st_size} bytes exceeds the limit of {limits.max_file_bytes} "
            "(raise decode.max_file_bytes to accept it)"
        )
    if not os.access(path, os.R_OK):
        raise SourceNotFound(f"{path}: not readable (permissions)")


def _open(
    source: str,
    limits: DecodeLimits,
    options: dict[str, str] | None = None,
    hwaccel: Any = None,
) -> Any:
    try:
        return av.open(
            source,
            mode="r",
            timeout=(limits.open_timeout_s, limits.read_timeout_s),
            options=options or {},
            hwaccel=hwaccel,
        )
    except av.error.ExitError as exc:
        raise DecodeTimeout(f"{source}: timed out opening ({exc})") from exc
    except av.error.InvalidDataError as exc:
        raise DecodeError(
            f"{source}: not a video FFmpeg can read (invalid data: corrupt, truncated "
            "or not a media file)"
        ) from exc
    except av.error.FileNotFoundError as exc:
        raise SourceNotFound(f"{source}: no such file") from exc
    except av.error.FFmpegError as exc:
        raise DecodeError(f"{source}: cannot open: {exc}") from exc


def _info(container: Any, stream: Any, source: str, limits: DecodeLimits) -> VideoInfo:
    tb = stream.time_base
    origin = float(stream.start_time * tb) if stream.start_time is not None and tb else None
    duration: float | None = None
    if stream.duration is not None and tb:
        duration = float(stream.duration * tb)
    elif container.duration is not None:
        duration = container.duration / 1e6
    fps = float(stream.average_rate) if stream.average_rate else None
    width, height = int(stream.codec_context.width), int(stream.codec_context.height)
    if width * height > limits.max_pixels:
        raise InputTooLarge(
            f"{source}: {width}x{height} exceeds the limit of {limits.max_pixels} pixels"
        )
    if duration is not None and duration > limits.max_duration_s:
        raise InputTooLarge(
            f"{source}: {duration:.1f} s exceeds the limit of {limits.max_duration_s:.0f} s"
        )
    return VideoInfo(
        format=str(container.format.name),
        codec=str(stream.codec_context.name),
        width=width,
        height=height,
        fps=fps,
        duration_s=duration if duration is not None else math.nan,
        origin_s=origin if origin is not None else math.nan,
        rotation_deg=0,
        frames=int(stream.frames) if stream.frames else None,
    )


def _video_stream(container: Any, source: str) -> Any:
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise NoVideoStream(f"{source}: no video stream (streams: {', '.join(kinds)})")
    return container.streams.video[0]


def _to_rgb(frame: Any) -> RGBArray:
    rgb: RGBArray = frame.to_ndarray(format="rgb24")
    rot = int(getattr(frame, "rotation", 0) or 0) % 360
    # rotation is the counter-clockwise angle to apply for display
    if rot:
        rgb = np.ascontiguousarray(np.rot90(rgb, k=rot // 90))
    return rgb


def _frames(container: Any, stream: Any, source: str) -> Iterator[tuple[Any, float]]:
    """Yield (av frame, pts seconds) in presentation order, mapping FFmpeg errors."""
    last_pts = -math.inf
    try:
        for frame in container.decode(stream):
            if frame.pts is None:
                # no timestamp: assume it follows the previous frame by one frame time
                step = 1.0 / float(stream.average_rate) if stream.average_rate else 0.04
                pts = last_pts + step if math.isfinite(last_pts) else 0.0
            else:
                pts = float(frame.pts * frame.time_base)
            last_pts = pts
            yield frame, pts
    except av.error.ExitError as exc:
        raise DecodeTimeout(f"{source}: timed out reading ({exc})") from exc
    except (av.error.InvalidDataError, av.error.FFmpegError) as exc:
        raise DecodeError(
            f"{source}: decoding failed mid-stream ({exc}); file corrupt or truncated"
        ) from exc


def probe(path: str | Path, limits: DecodeLimits = DecodeLimits()) -> VideoInfo:
    """Open ``path`` and describe its first video stream; decodes nothing when
    the container states its duration and start time."""
    source = str(path)
    if isinstance(path, Path) or "://" not in source:
        check_file(Path(path), limits)
    container = _open(source, limits)
    try:
        stream = _video_stream(container, source)
        info = _info(container, stream, source, limits)
        if math.isnan(info.duration_s) or math.isnan(info.origin_s):
            info = _measure(container, stream, source, info)
        return info
    finally:
        container.close()


def _measure(container: Any, stream: Any, source: str, info: VideoInfo) -> VideoInfo:
    """Fill a missing origin or duration by reading packet timestamps (no decode)."""
    first = math.inf
    last = -math.inf
    last_dur = 0.0
    for packet in container.demux(stream):
        if packet.pts is None or packet.time_base is None:
            continue
        t = float(packet.pts * packet.time_base)
        first = min(first, t)
        if t >= last:
            last = t
            last_dur = float(packet.duration * packet.time_base) if packet.duration else 0.0
    if not math.isfinite(first):
        raise NotEnoughFrames(f"{source}: no timestamped video packets")
    origin = info.origin_s if not math.isnan(info.origin_s) else first
    duration = info.duration_s if not math.isnan(info.duration_s) else last + last_dur - origin
    return replace(info, duration_s=duration, origin_s=origin)


def sample_file(
    path: str | Path,
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
    samples show it. Decoding stops as soon as every schedule is resolved.

    Returns the :class:`VideoInfo` (with rotation filled in). Raises
    :class:`NotEnoughFrames` for inputs of fewer than two frames (a still image
    is not a video) and other :class:`DecodeError` subclasses for bad input.
    """
    if info is None:
        info = probe(path, limits)
    source = str(path)
    origin = info.origin_s
    container = _open(source, limits)
    rotation = 0
    try:
        stream = _video_stream(container, source)
        stream.thread_type = "AUTO"
        if limits.threads:
            stream.codec_context.thread_count = limits.threads
        samplers: dict[str, GridSampler[Any]] = {
            name: GridSampler(origin + t for t in times) for name, times in schedules.items()
        }
        recent: dict[int, Frame] = {}

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

        n = 0
        for av_frame, pts in _frames(container, stream, source):
            n += 1
            rotation = int(getattr(av_frame, "rotation", 0) or 0)
            for name, sampler in samplers.items():
                deliver(name, sampler.push((av_frame, pts), pts))
            if all(sm.done for sm in samplers.values()):
                break
        if n < 2 and not all(sm.done for sm in samplers.values()):
            if n == 0:
                raise NotEnoughFrames(f"{source}: no decodable video frames")
            raise NotEnoughFrames(
                f"{source}: a single frame (a still image?); a video of at least 2 frames is needed"
            )
        for name, sampler in samplers.items():
            deliver(name, sampler.finish())
    finally:
        container.close()
    if rotation:
        swap = rotation % 180 != 0
        info = replace(
            info,
            rotation_deg=rotation,
            width=info.height if swap else info.width,
            height=info.width if swap else info.height,
        )
    return info


# --- live sources (used by monitor.sources) ----------------------------------------------


class LiveVideo:
    """An open live or file input for frame-by-frame reading in one thread.

    ``open`` applies the open timeout and FFmpeg ``options`` (e.g.
    ``{"rtsp_transport": "tcp"}``); :meth:`frames` yields ``(av frame, pts_s)``
    in decode order and raises :class:`DecodeTimeout` when no data came within
    the read timeout, :class:`DecodeError` on a broken stream. Frames stay in
    PyAV form; :func:`frame_to_rgb` converts the few that are sampled.
    ``description`` is what error messages use (pass a redacted URL).

    With ``cuda_device``, decoding runs on that GPU's NVDEC through FFmpeg and frames
    stay in device memory (``decoder == "nvdec"``); when no GPU decoder can be opened
    the input is decoded on the CPU (``decoder == "cpu"``, ``fallback_reason`` says
    why), and FFmpeg decodes in software what the GPU decoder does not support.
    """

    def __init__(
        self,
        source: str,
        limits: DecodeLimits = DecodeLimits(),
        options: dict[str, str] | None = None,
        description: str | None = None,
        cuda_device: int | None = None,
    ) -> None:
        self.description = description or source
        self.decoder = "cpu"
        self.fallback_reason: str | None = None
        hwaccel = _cuda_hwaccel(cuda_device) if cuda_device is not None else None
        if hwaccel is not None:
            try:
                self._container = _open(source, limits, options, hwaccel)
                self.decoder = "nvdec"
            except DecodeError as exc:
                if isinstance(exc, DecodeTimeout | SourceNotFound):
                    raise type(exc)(exc.message.replace(source, self.description)) from None
                # no usable GPU decoder (no device, no driver): decode on the CPU instead
                self.fallback_reason = exc.message.replace(source, self.description)
                hwaccel = None
        try:
            if hwaccel is None:
                self._container = _open(source, limits, options)
        except DecodeError as exc:
            # _open's messages name the source: say it again with the redacted form
            raise type(exc)(
                exc.message.replace(source, self.description)
            ) from None
        try:
            self._stream = _video_stream(self._container, self.description)
            self.info = _info(self._container, self._stream, self.description, limits)
        except BaseException:
            self._container.close()
            raise
        self._stream.thread_type = "AUTO"
        if limits.threads:
            self._stream.codec_context.thread_count = limits.threads

    def frames(self) -> Iterator[tuple[Any, float]]:
        """Yield ``(av frame, pts seconds)`` until the input ends (or :meth:`close`)."""
        if self._container is None:
            return
        yield from _frames(self._container, self._stream, self.description)

    def close(self) -> None:
        """Release the input now (idempotent): the container, and the decoder's threads.

        FFmpeg's frame threads live as long as the codec context, which lives as
        long as something references the stream; dropping our references here
        frees them at once instead of whenever the garbage collector meets a
        cycle holding this object (each RTSP reconnect used to leave its
        decoder threads and buffers behind until then).
        """
        if self._container is not None:
            self._container.close()
        self._container = None
        self._stream = None


def _cuda_hwaccel(device: int) -> Any:
    """NVDEC through FFmpeg: frames stay in device memory (``is_hw_owned``) in the CUDA
    primary context that torch also uses; streams the GPU decoder cannot take (codec,
    size, profile) are decoded in software by FFmpeg itself."""
    from av.codec.hwaccel import HWAccel

    return HWAccel(
        "cuda", device=str(device), allow_software_fallback=True,
        options={"primary_ctx": "1"}, is_hw_owned=True,
    )


def gpu_decode_available() -> bool:
    """Whether the loaded FFmpeg was built with CUDA (NVDEC) support; whether a GPU is
    there is only known when a decoder opens."""
    from av.codec.hwaccel import hwdevices_available

    return "cuda" in hwdevices_available()


def choose_decode_backend(setting: str, model_device: str, ffmpeg_cuda: bool) -> str:
    """``nvdec`` or ``cpu`` for a ``source.decode_backend`` setting.

    ``auto`` takes NVDEC when the model runs on CUDA and FFmpeg has CUDA support, else the
    CPU; ``nvdec`` asks for it wherever FFmpeg has it (a stream that cannot open it still
    falls back to the CPU, logged); ``cpu`` never uses it."""
    if setting == "cpu" or not ffmpeg_cuda:
        return "cpu"
    if setting == "nvdec":
        return "nvdec"
    return "nvdec" if model_device.startswith("cuda") else "cpu"


def frame_to_rgb(frame: Any) -> RGBArray:
    """Convert one PyAV video frame to RGB ``uint8`` (rotation metadata applied)."""
    return _to_rgb(frame)
