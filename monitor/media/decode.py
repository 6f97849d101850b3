"""Decoding with PyAV: the only module that imports ``av``.

Contract:

* Local files are opened once (:func:`monitor.media.safe_input.open_local`: a regular
  file within the size bound) and FFmpeg reads that open file, restricted to the
  ``file`` protocol and an allowlist of demuxers (``DecodeLimits.allowed_formats``):
  HLS playlists, ffconcat lists and SDP files, which make FFmpeg open whatever
  they name, are refused with :class:`~monitor.errors.UnsupportedSource`
  (:func:`open_container`). Container metadata is decoded tolerantly (bad UTF-8
  is replaced).
* Decoded frames come with FFmpeg-style best-effort times (pts, or dts when the
  pts come out of order: :class:`~monitor.media.decode_guard.TimeGuess`).
* :class:`LiveVideo` reads a live input or a file frame by frame for the
  streaming service (optionally on NVDEC).
* Scoring a file (probe, sample) lives in :mod:`monitor.media.decode_file`; the limits
  and the reported facts in :mod:`monitor.media.decode_info`.

Every FFmpeg failure becomes a :class:`~monitor.errors.DecodeError` subclass
(or another :class:`~monitor.errors.InputError`) with a message that says what
was wrong with the input.

The module is kept whole: it is the only one that imports ``av``, so everything
that touches PyAV's objects (and its error types) stays here.
"""

from __future__ import annotations

import errno
import io
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import av
import av.error
import numpy as np

from ..errors import (
    DecodeError,
    DecodeTimeout,
    InputError,
    InputTooLarge,
    NoVideoStream,
    SourceNotFound,
    SourceUnreachable,
    UnsupportedSource,
)
from ..types import RGBArray
from .decode_guard import DecodeBudget, TimeGuess
from .decode_info import (
    DecodeLimits,
    MediaSource,
    VideoInfo,
    normalise_rotation,
    source_name,
)
from .safe_input import OpenedFile, open_local, sniff_refused

LOOKAHEAD_FRAMES = 4
"""Frames decoded ahead of the one being timed, to pick pts or dts before the first."""

_REFUSED_DEMUXERS = {
    "an HLS playlist": "hls",
    "an ffconcat list": "concat",
    "an SDP session description": "sdp",
}


_HTTP_REASONS = {
    "400": "400 Bad Request",
    "401": "401 Unauthorized (check the credentials)",
    "403": "403 Forbidden (check the credentials and the server's access rules)",
    "404": "404 Not Found (wrong path, or nothing is published there yet)",
    "4XX": "a 4xx client error",
    "5XX": "a 5xx server error (the server failed; it may recover)",
}


def http_status_of(errno: int | None) -> str | None:
    """The HTTP/RTSP status FFmpeg encoded in an error number (``FFERRTAG(0xF8, '4',
    '0', '4')``, which PyAV shows as ``[Errno 875574520]``): "404", "4XX"...; else None."""
    if errno is None:
        return None
    tag = abs(errno)
    if tag & 0xFF != 0xF8:
        return None
    status = bytes((tag >> 8 & 0xFF, tag >> 16 & 0xFF, tag >> 24 & 0xFF)).decode("latin-1")
    return status if status in _HTTP_REASONS else None


_NETWORK_ERRNOS = frozenset({
    errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EHOSTUNREACH,
    errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN,
})
"""FFmpeg error numbers (negated errno) that mean the network, not the media, failed."""


def _av_errors(source: str, exc: av.error.FFmpegError, opening: bool) -> InputError:
    status = http_status_of(exc.errno)
    if status is not None:  # the server answered an HTTP/RTSP error status
        text = f"{source}: the server answered {_HTTP_REASONS[status]}"
        return SourceNotFound(text) if status == "404" else DecodeError(text)
    if isinstance(exc, av.error.ExitError):
        return DecodeTimeout(f"{source}: timed out {'opening' if opening else 'reading'} ({exc})")
    if isinstance(exc, av.error.InvalidDataError):
        return DecodeError(
            f"{source}: not a video FFmpeg can read (invalid data: corrupt, truncated "
            "or not a media file)"
        )
    if isinstance(exc, av.error.FileNotFoundError):
        return SourceNotFound(f"{source}: no such file")
    if exc.errno in _NETWORK_ERRNOS:  # a connection problem, not the data: say so
        return SourceUnreachable(
            f"{source}: cannot reach the server ({exc.strerror or type(exc).__name__}); "
            "is it running, and are the host and port right?"
        )
    # FFmpeg's own words, without the file name PyAV appends (a descriptor number here)
    what = exc.strerror or type(exc).__name__
    return DecodeError(
        f"{source}: FFmpeg cannot {'open' if opening else 'read'} it ({what}); "
        "not a video it can read, or corrupt"
    )


def _open(
    source: str,
    limits: DecodeLimits,
    options: dict[str, str] | None = None,
    hwaccel: Any = None,
    file: io.BufferedReader | None = None,
) -> Any:
    opts = dict(options or {})
    if file is not None:
        opts = {**_file_options(limits), **opts}
    try:
        return av.open(
            file if file is not None else source,
            mode="r",
            timeout=(limits.open_timeout_s, limits.read_timeout_s),
            options=opts,
            hwaccel=hwaccel,
            metadata_errors="replace",
        )
    except av.error.ArgumentError as exc:
        if "format_whitelist" in opts:
            raise UnsupportedSource(
                f"{source}: not one of the video containers this service reads "
                "(decode.allowed_formats)"
            ) from exc
        raise _av_errors(source, exc, True) from exc
    except av.error.FFmpegError as exc:
        raise _av_errors(source, exc, True) from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise DecodeError(f"{source}: unreadable container metadata ({exc})") from exc


def _fd_name(opened: OpenedFile, fallback: str) -> str:
    """A name by which FFmpeg's ``file`` protocol opens the file behind ``opened``'s
    descriptor itself (``/proc/self/fd/N`` on Linux; ``fallback`` where there is none)."""
    name = f"/proc/self/fd/{opened.fd}"
    return name if os.path.exists(name) else fallback


def _file_options(limits: DecodeLimits) -> dict[str, str]:
    """FFmpeg options for local files: only the ``file`` protocol, allowlisted demuxers."""
    return {"format_whitelist": ",".join(limits.allowed_formats), "protocol_whitelist": "file"}


def _refuse_openers(opened: OpenedFile, limits: DecodeLimits) -> bool:
    """Refuse playlists, concat lists and SDP (they make FFmpeg open what they name)
    unless their demuxer is allowed, with a message that says what the file is.
    Returns True for an allowed one (it must then be opened by name)."""
    refused = sniff_refused(opened.head())
    if refused is None:
        return False
    if _REFUSED_DEMUXERS.get(refused) not in limits.allowed_formats:
        raise UnsupportedSource(
            f"{opened.path}: {refused}, which makes FFmpeg open the files or URLs it names; "
            "refused (decode.allowed_formats)"
        )
    return True


@contextmanager
def open_container(path: MediaSource, limits: DecodeLimits) -> Iterator[tuple[Any, str]]:
    """Open ``path`` for reading and yield ``(container, name for messages)``.

    Local paths and :class:`OpenedFile` are read through one open descriptor
    (allowlisted demuxers, ``file`` protocol only); URLs go to FFmpeg as given.
    """
    if isinstance(path, str) and "://" in path:
        container = _open(path, limits)
        try:
            yield container, path
        finally:
            container.close()
        return
    opened = path if isinstance(path, OpenedFile) else open_local(path, limits.max_file_bytes)
    source = str(opened.path)
    try:
        if _refuse_openers(opened, limits):
            # allowed by configuration: the demuxer resolves the names it reads relative
            # to the file's own name (still only the file protocol, allowlisted demuxers)
            container = _open(source, limits, _file_options(limits))
            try:
                yield container, source
            finally:
                container.close()
            return
        reader = opened.reader()
        try:
            container = _open(source, limits, file=reader)
            try:
                yield container, source
            finally:
                container.close()
        finally:
            reader.close()
    finally:
        if opened is not path:
            opened.close()


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
    frames = int(stream.frames) if stream.frames else None
    return VideoInfo(
        format=str(container.format.name),
        codec=str(stream.codec_context.name),
        width=width,
        height=height,
        fps=fps,
        duration_s=duration if duration is not None else math.nan,
        origin_s=origin if origin is not None else math.nan,
        rotation_deg=0,
        frames=frames,
        frames_header=frames,
        fps_header=fps,
    )


def _video_stream(container: Any, source: str) -> Any:
    """The video stream to read: the first one FFmpeg has a decoder for.

    Every reader (probe, sample, live sources) chooses its stream here, so none of
    them meets a stream without a codec context (PyAV gives none to a track whose
    codec FFmpeg cannot decode: an unknown FourCC or codec id). Raises
    :class:`NoVideoStream` for a container without video, and
    :class:`DecodeError` (``decode_error``) when no video stream can be decoded.
    """
    videos = container.streams.video
    if not videos:
        kinds = sorted({s.type for s in container.streams}) or ["none"]
        raise NoVideoStream(f"{source}: no video stream (streams: {', '.join(kinds)})")
    for stream in videos:
        if stream.codec_context is not None:
            return stream
    raise DecodeError(
        f"{source}: its video is in a codec this FFmpeg cannot decode (an unknown or "
        f"unsupported codec tag in the {container.format.name} container; ffprobe shows "
        "it); re-encode it to a common codec, e.g. "
        "`ffmpeg -i INPUT -c:v libx264 OUTPUT.mp4` for H.264"
    )


SCALE_THREADS = 1
"""swscale threads per conversion. One: conversions already run in parallel (a pool of
conversion threads, one decoder per stream), and PyAV's default (0, automatic) gives each
converting thread's cached scaler its own team of slice threads, created on first use
and kept while the thread lives: more threads than cores, and a thread count that climbs
as pools grow."""


def _to_rgb(frame: Any) -> RGBArray:
    rgb: RGBArray = frame.to_ndarray(format="rgb24", threads=SCALE_THREADS)
    rot = normalise_rotation(getattr(frame, "rotation", 0) or 0)
    # rotation is the counter-clockwise angle to apply for display
    if rot:
        rgb = np.ascontiguousarray(np.rot90(rgb, k=rot // 90))
    return rgb


def _step_s(stream: Any) -> float:
    return 1.0 / float(stream.average_rate) if stream.average_rate else 0.04


def _decoded(
    container: Any, stream: Any, source: str, budget: DecodeBudget | None = None
) -> Iterator[Any]:
    """Decoded frames of ``stream`` in output order, FFmpeg errors mapped; the packets
    fed to the decoder are counted on ``budget``, which checks the job's deadline on
    each one (a long run of packets that decode to no frame is bounded too)."""
    try:
        for packet in container.demux(stream):
            if budget is not None:
                budget.packet(packet.size, packet.is_discard)
            yield from packet.decode()
    except av.error.FFmpegError as exc:
        if isinstance(exc, av.error.ExitError) or http_status_of(exc.errno) is not None:
            raise _av_errors(source, exc, False) from exc
        raise DecodeError(
            f"{source}: decoding failed mid-stream ({exc}); file corrupt or truncated"
        ) from exc


def _stamps(frame: Any) -> tuple[int | None, int | None]:
    return frame.pts, frame.dts


def _frames(
    container: Any,
    stream: Any,
    source: str,
    lookahead: int = 0,
    guess: TimeGuess | None = None,
    budget: DecodeBudget | None = None,
) -> Iterator[tuple[Any, float]]:
    """Yield (av frame, best-effort time in seconds) in output (display) order."""
    if guess is None:
        tb = float(stream.time_base) if stream.time_base else 1.0
        guess = TimeGuess(tb, _step_s(stream))
    yield from guess.timed(_decoded(container, stream, source, budget), _stamps, lookahead)


def _demux(container: Any, stream: Any, source: str) -> Iterator[Any]:
    """Packets of ``stream`` (no decoding), FFmpeg errors mapped to typed errors."""
    try:
        yield from container.demux(stream)
    except av.error.FFmpegError as exc:
        raise _av_errors(source, exc, False) from exc


# --- live sources (used by monitor.media.sources) ----------------------------------------------


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
        self._file: OpenedFile | None = None
        if "://" not in source:
            # a local file: the same demuxer allowlist as scored files (no playlists),
            # checked on the file opened once; FFmpeg then reads that open file through
            # its /proc/self/fd link (natively: no re-resolution of the name)
            self._file = open_local(source, limits.max_file_bytes)
            try:
                if not _refuse_openers(self._file, limits):
                    source = _fd_name(self._file, source)
            except BaseException:
                self._file.close()
                raise
            options = {**_file_options(limits), **(options or {})}
        try:
            self._open_input(source, limits, options, cuda_device)
        except BaseException:
            self.close()
            raise

    def _open_input(
        self, source: str, limits: DecodeLimits, options: dict[str, str] | None,
        cuda_device: int | None,
    ) -> None:
        self._container: Any = None
        self._stream: Any = None
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
        self._stream = _video_stream(self._container, self.description)
        self.info = _info(self._container, self._stream, self.description, limits)
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
        if self._file is not None:
            self._file.close()
            self._file = None


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


def new_scaler() -> Any:
    """A private swscale context for :func:`frame_to_small_rgb` (one per thread)."""
    from av.video.reformatter import VideoReformatter

    return VideoReformatter()


def frame_to_small_rgb(frame: Any, width: int, scaler: Any = None,
                       interpolation: str = "AREA") -> RGBArray:
    """One PyAV video frame scaled to ``width`` px wide (even height, aspect kept) and
    converted to RGB ``uint8`` in one swscale pass (rotation metadata applied after).
    Much cheaper than :func:`frame_to_rgb` then scaling: the full-size RGB is never made.
    ``interpolation`` is swscale's filter: ``AREA`` (the default: a box filter, right for
    shrinking, about 1.5x cheaper than ``BILINEAR`` from 720p to 240 px wide, see
    ``bench/bench_evidence.py``).

    ``scaler`` (:func:`new_scaler`; None: a fresh one, about 1 ms more) must be the
    caller's own: ``frame.reformat`` would use the frame's shared context, which the
    engine's conversion thread may be using on the same frame at the same time.
    Raises ValueError for a frame swscale refuses (a hardware frame)."""
    w_in, h_in = int(frame.width), int(frame.height)
    w = max(2, min(width, w_in) // 2 * 2)
    h = max(2, round(h_in * w / max(1, w_in) / 2) * 2)
    try:
        small = (scaler or new_scaler()).reformat(frame, width=w, height=h, format="rgb24",
                                                  interpolation=interpolation,
                                                  threads=SCALE_THREADS)
    except (av.error.FFmpegError, ValueError, TypeError) as exc:
        raise ValueError(f"cannot scale the frame: {exc}") from None
    rgb: RGBArray = small.to_ndarray()
    rot = normalise_rotation(getattr(frame, "rotation", 0) or 0)
    return np.ascontiguousarray(np.rot90(rgb, k=rot // 90)) if rot else rgb


__all__ = [
    "LOOKAHEAD_FRAMES",
    "SCALE_THREADS",
    "DecodeLimits",
    "LiveVideo",
    "MediaSource",
    "VideoInfo",
    "choose_decode_backend",
    "frame_to_rgb",
    "frame_to_small_rgb",
    "gpu_decode_available",
    "new_scaler",
    "normalise_rotation",
    "open_container",
    "source_name",
]
