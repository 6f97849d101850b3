"""Test media written with PyAV: real encoded clips with known timestamps.

``write_clip`` encodes frames whose content depends on the frame number (a
moving pattern), so every frame differs from its neighbours and embeddings of
distinct frames differ. ``pts_s`` lists give exact presentation times, which is
how variable frame rate and non-zero starts are made.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def pattern_frame(i: int, width: int, height: int, motion: str = "linear") -> np.ndarray:
    """A deterministic RGB frame for index ``i``: a bright square moving over a gradient.

    ``motion="linear"`` moves the square in a straight line; ``"jitter"`` moves
    it to pseudo-random places (a jerky, curved trajectory).
    """
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack(
        [(xx * 255 // max(1, width - 1)), (yy * 255 // max(1, height - 1)), np.full_like(xx, 80)],
        axis=-1,
    ).astype(np.uint8)
    side = max(4, min(width, height) // 4)
    if motion == "linear":
        x = (i * 3) % max(1, width - side)
        y = (i * 2) % max(1, height - side)
    else:
        rng = np.random.default_rng(i)
        x = int(rng.integers(0, max(1, width - side)))
        y = int(rng.integers(0, max(1, height - side)))
    img[y : y + side, x : x + side] = (255, 255 - (i * 7) % 256, (i * 13) % 256)
    return img


def write_clip(
    path: Path,
    fps: float = 30.0,
    n_frames: int = 90,
    size: tuple[int, int] = (64, 48),
    codec: str = "libx264",
    pts_s: Sequence[float] | None = None,
    motion: str = "linear",
    frame_fn: Callable[[int, int, int], np.ndarray] | None = None,
    time_base: Fraction | None = None,
    pix_fmt: str | None = None,
    crf: int = 0,
) -> list[float]:
    """Encode a clip; return the presentation times (s) written, one per frame.

    Without ``pts_s`` frames are spaced 1/fps from 0. Lossless-ish settings
    (crf 0 for H.264) keep decoded frames close to what was written.
    """
    width, height = size
    times = list(pts_s) if pts_s is not None else [i / fps for i in range(n_frames)]
    if time_base is None:
        # MPEG-2/MPEG-4 part 2 need a frame-rate time base; GIF counts in centiseconds
        time_base = {
            "mpeg4": Fraction(1, round(fps)),
            "mpeg2video": Fraction(1, round(fps)),
            "gif": Fraction(1, 100),
        }.get(codec, Fraction(1, 90000))
    with av.open(str(path), mode="w") as container:
        rate = Fraction(fps).limit_denominator(1000)
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = pix_fmt or {"libx264": "yuv444p", "gif": "rgb8"}.get(codec, "yuv420p")
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": "ultrafast", "bf": "0"}
        stream.time_base = time_base
        stream.codec_context.time_base = time_base
        for i, t in enumerate(times):
            rgb = (
                frame_fn(i, width, height) if frame_fn else pattern_frame(i, width, height, motion)
            )
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = round(t / time_base)
            frame.time_base = time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return times


def decoded_pts(path: Path) -> list[float]:
    """Presentation times of every decoded frame, as PyAV reports them."""
    with av.open(str(path)) as c:
        return [float(f.pts * f.time_base) for f in c.decode(video=0)]


def write_h264_420(path: Path, fps: float = 25.0, n_frames: int = 30,
                   size: tuple[int, int] = (64, 48), crf: int = 5) -> Path:
    """An H.264 4:2:0 clip (what cameras and encoders send) of the jitter pattern."""
    write_clip(path, fps=fps, n_frames=n_frames, size=size, motion="jitter", pix_fmt="yuv420p",
               crf=crf)
    return path


def ffprobe_h264_frames(path: Path) -> int:
    """Frames ffprobe decodes from ``path``'s video stream, which must be H.264."""
    exe = shutil.which("ffprobe")
    assert exe is not None, "ffprobe is not installed (apt-get install -y ffmpeg)"
    out = subprocess.run(
        [exe, "-v", "error", "-count_frames", "-select_streams", "v:0",
         "-show_entries", "stream=nb_read_frames,codec_name", "-of", "json", str(path)],
        check=True, capture_output=True, text=True).stdout
    st = json.loads(out)["streams"][0]
    assert st["codec_name"] == "h264", st
    return int(st["nb_read_frames"])
