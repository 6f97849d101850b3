"""Containers and codecs FFmpeg reads, and rotation metadata, through the whole path."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from monitor.core.embed import Embedder
from monitor.core.pipeline import score_file
from monitor.media.decode_file import probe, sample_file
from monitor.media.sampler import centre_window_start, window_times
from monitor.types import Sample
from tests.media import write_clip

FFMPEG = shutil.which("ffmpeg")


@pytest.mark.parametrize(
    ("name", "codec"),
    [
        ("clip.mp4", "libx264"),
        ("clip.mkv", "libx264"),
        ("clip.avi", "mpeg4"),
        ("clip.webm", "libvpx-vp9"),
        ("clip.webm", "libvpx"),
        ("clip.ts", "mpeg2video"),
        ("clip.gif", "gif"),
    ],
    ids=["mp4-h264", "mkv-h264", "avi-mpeg4", "webm-vp9", "webm-vp8", "ts-mpeg2", "gif"],
)
def test_containers(tmp_path: Path, tiny_embedder: Embedder, name: str, codec: str) -> None:
    path = tmp_path / name
    fps = 10.0 if codec == "gif" else 25.0
    write_clip(path, fps=fps, n_frames=int(3 * fps), codec=codec, size=(64, 48),
               pts_s=[i / fps for i in range(int(3 * fps))])
    result = score_file(path, tiny_embedder)
    assert result.info.duration_s == pytest.approx(3.0, abs=0.25)
    assert np.isfinite(result.centre.window.features).all()
    assert result.centre.repeated_samples == (0 if fps > 11.5 else result.centre.repeated_samples)
    if fps < 11.5:
        assert result.centre.flagged


@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg CLI not installed (apt-get install ffmpeg)")
@pytest.mark.parametrize("rotate", [90, 180, 270])
def test_rotation_metadata_is_applied_like_ffmpeg(tmp_path: Path, rotate: int) -> None:
    src = tmp_path / "src.mp4"
    write_clip(src, fps=25, n_frames=75, size=(64, 48))
    rotated = tmp_path / f"rot{rotate}.mp4"
    subprocess.run([FFMPEG, "-loglevel", "error", "-y", "-i", str(src), "-c", "copy",
                    "-metadata:s:v:0", f"rotate={rotate}", str(rotated)], check=True, timeout=60)
    info = probe(rotated)
    times = window_times(centre_window_start(info.duration_s))
    got: list[Sample] = []
    info = sample_file(rotated, {"c": times}, lambda _n, s: got.append(s))
    # reference: what ffmpeg itself displays (it auto-rotates when decoding to raw video)
    ref_raw = subprocess.run(
        [FFMPEG, "-loglevel", "error", "-i", str(rotated), "-f", "rawvideo", "-pix_fmt", "rgb24",
         "-"], check=True, capture_output=True, timeout=60).stdout
    h, w = (64, 48) if rotate in (90, 270) else (48, 64)
    ref = np.frombuffer(ref_raw, dtype=np.uint8).reshape(-1, h, w, 3)
    assert (info.height, info.width) == (h, w)
    assert info.rotation_deg % 360 in (rotate, (360 - rotate) % 360)
    s = got[0]
    assert s.frame.rgb.shape == (h, w, 3)
    np.testing.assert_allclose(s.frame.rgb.astype(int), ref[s.frame.index].astype(int), atol=2)
