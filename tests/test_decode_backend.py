"""Where streams decode: NVDEC through FFmpeg when a GPU is there, the CPU otherwise.

The selection logic is tested as a table; the fallback with the real FFmpeg on this
machine, which has CUDA support compiled in but no GPU (opening NVDEC fails, the stream
decodes on the CPU). The ``cuda`` tests decode on the GPU where one exists.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from monitor.config import ServeSettings, ServeSourceSettings, StreamSpec
from monitor.media.colour import frame_planes, yuv_to_rgb
from monitor.media.decode import (
    LiveVideo,
    choose_decode_backend,
    frame_to_rgb,
    gpu_decode_available,
)
from monitor.media.sources.base import SourceContext
from monitor.media.sources.file import FileSource
from monitor.media.sources.rtsp import resolve_decode_backend

from .media import write_h264_420

NO_GPU = not torch.cuda.is_available()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_h264_420(tmp_path_factory.mktemp("hwdec") / "h264.mp4", crf=23)


@pytest.mark.parametrize(
    ("setting", "device", "ffmpeg_cuda", "want"),
    [
        ("auto", "cuda:0", True, "nvdec"),
        ("auto", "cpu", True, "cpu"),
        ("auto", "cuda:0", False, "cpu"),
        ("nvdec", "cpu", True, "nvdec"),
        ("nvdec", "cuda", False, "cpu"),
        ("cpu", "cuda:0", True, "cpu"),
    ],
)
def test_choice_of_backend(setting: str, device: str, ffmpeg_cuda: bool, want: str) -> None:
    assert choose_decode_backend(setting, device, ffmpeg_cuda) == want


def test_serve_settles_auto_on_the_models_gpu() -> None:
    auto = ServeSettings().source
    assert auto.decode_backend == "auto"
    assert resolve_decode_backend(auto, "cpu").decode_backend == "cpu"
    on_gpu = resolve_decode_backend(auto, "cuda:1")
    if gpu_decode_available():  # PyAV's wheels build FFmpeg with CUDA: true here
        assert (on_gpu.decode_backend, on_gpu.decode_device) == ("nvdec", 1)
    explicit = ServeSourceSettings(decode_backend="nvdec", decode_device=3)
    assert resolve_decode_backend(explicit, "cuda:1").decode_device == 3


@pytest.mark.skipif(not NO_GPU, reason="the fallback needs a machine without a GPU")
def test_without_a_gpu_nvdec_falls_back_to_the_cpu(clip: Path) -> None:
    video = LiveVideo(str(clip), cuda_device=0, description="cam")
    try:
        frames = [f for f, _ in video.frames()]
    finally:
        video.close()
    assert video.decoder == "cpu"
    assert video.fallback_reason and "cam" in video.fallback_reason
    assert str(clip) not in video.fallback_reason  # the redacted name only
    assert len(frames) == 30 and frames[0].format.name == "yuv420p"


@pytest.mark.skipif(not NO_GPU, reason="the fallback needs a machine without a GPU")
async def test_a_file_stream_asked_for_nvdec_still_streams(
    clip: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = ServeSourceSettings(decode_backend="nvdec", buffer_frames=64)
    ctx = SourceContext(url=str(clip), description="cam", settings=settings)
    caplog.set_level(logging.WARNING, "restrav")
    src = await FileSource.open(StreamSpec(id="cam", url=str(clip)), ctx)
    try:
        assert src.cuda_device == 0
        frame = await asyncio.wait_for(src.recv(), 30)
        assert frame.planes() is not None  # software frames: host planes
    finally:
        await src.aclose()
    assert any("GPU decoding unavailable" in r.getMessage() for r in caplog.records)


@pytest.mark.cuda
def test_nvdec_frames_stay_on_the_device_and_convert_like_the_cpu(clip: Path) -> None:
    gpu = LiveVideo(str(clip), cuda_device=0)
    cpu = LiveVideo(str(clip))
    try:
        pairs = list(zip((f for f, _ in gpu.frames()), (f for f, _ in cpu.frames())))
    finally:
        gpu.close()
        cpu.close()
    assert gpu.decoder == "nvdec"
    assert len(pairs) == 30
    for hw, sw in pairs[:5]:
        assert hw.format.name == "cuda"
        p = frame_planes(hw)
        assert p is not None and isinstance(p.y, torch.Tensor) and p.y.is_cuda
        rgb = yuv_to_rgb(p.y[None], p.u[None], p.v[None], p.matrix, p.full_range)  # type: ignore[index]
        got = rgb[0].permute(1, 2, 0).to(torch.uint8).cpu().numpy()
        diff = np.abs(got.astype(np.int16) - frame_to_rgb(sw).astype(np.int16))
        assert diff.max() <= 1
