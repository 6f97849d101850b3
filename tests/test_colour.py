"""Colour conversion and resize on the device (monitor.media.colour) equal today's CPU path.

The CPU path is FFmpeg's rgb24 conversion (PyAV ``to_ndarray``), then /255 and the
bicubic antialiased resize of ``monitor.core.embed.preprocess``. The device path uploads
4:2:0 planes and converts them with torch; both run here on the CPU, and the
``cuda`` test repeats the comparison on a GPU.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from monitor.config import EngineSettings
from monitor.core.embed import Embedder, preprocess
from monitor.core.geometry import window_features
from monitor.live.batch import EngineSample
from monitor.live.conversion import pixel_path
from monitor.live.engine import Engine
from monitor.media.colour import YUVPlanes, frame_planes, planes_to_pixels, yuv_to_rgb
from monitor.media.decode import LiveVideo, frame_to_rgb
from monitor.media.sources import SourceFrame
from monitor.metrics import StreamMetrics
from monitor.types import WINDOW_SAMPLES, StreamScore

from .media import write_clip, write_h264_420

CPU = torch.device("cpu")


def first_frames(path: Path, n: int) -> list[av.VideoFrame]:
    with av.open(str(path)) as c:
        out = []
        for f in c.decode(c.streams.video[0]):
            out.append(f)
            if len(out) == n:
                break
        return out


def levels(p: YUVPlanes) -> np.ndarray:
    """The device path's 8-bit RGB levels of one frame, (H, W, 3), rotation applied."""
    y, u, v = (torch.from_numpy(np.asarray(a))[None] for a in (p.y, p.u, p.v))
    x = yuv_to_rgb(y, u, v, p.matrix, p.full_range)
    if p.rotation_deg:
        x = torch.rot90(x, k=p.rotation_deg // 90, dims=(2, 3))
    return x[0].permute(1, 2, 0).to(torch.uint8).numpy()


def assert_levels_match(got: np.ndarray, want: np.ndarray, name: str) -> None:
    """Equal to FFmpeg's levels but for rare pixels one level off: swscale's fixed-point
    coefficients put a few products on the other side of a truncation (measured: at most
    0.1 % of values, always one level)."""
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert diff.max() <= 1, name
    assert (diff > 0).mean() <= 0.002, name


def clips_420(shared_clips: Path) -> list[Path]:
    out = []
    for path in sorted(shared_clips.iterdir()):
        if path.suffix in (".json", ".md"):
            continue
        frames = first_frames(path, 1)
        if frames and frame_planes(frames[0]) is not None:
            out.append(path)
    return out


def test_levels_equal_ffmpeg_rgb24_on_every_shared_clip(shared_clips: Path) -> None:
    clips = clips_420(shared_clips)
    assert len(clips) >= 14  # every shared clip but the GIF and one 4:4:4 clip is 4:2:0
    for path in clips:
        for f in first_frames(path, 3):
            p = frame_planes(f)
            assert p is not None
            assert_levels_match(levels(p), frame_to_rgb(f), path.name)


def assert_model_input_equals_preprocess(path: Path) -> None:
    frames = first_frames(path, 4)
    planes = [frame_planes(f) for f in frames]
    assert all(p is not None for p in planes)
    got = planes_to_pixels(planes, 224, CPU)  # type: ignore[arg-type]
    want = preprocess([frame_to_rgb(f) for f in frames], 224, CPU)
    torch.testing.assert_close(got, want, rtol=0, atol=1.5 / 255, msg=path.name)
    assert (got - want).abs().mean() < 1e-5, path.name


def test_model_input_equals_preprocess_on_shared_clips(shared_clips: Path) -> None:
    for path in clips_420(shared_clips)[:6]:
        assert_model_input_equals_preprocess(path)


def test_model_input_equals_preprocess_on_made_clips(tmp_path: Path) -> None:
    """The shared clips' check on clips made here (full and limited range, BT.601 and
    BT.709, rotated, an odd size), so it runs where the shared clips are absent."""
    for name, args in (("full.mp4", ["-pix_fmt", "yuvj420p"]),
                       ("bt709.mp4", ["-pix_fmt", "yuv420p", "-colorspace", "bt709"]),
                       ("rot90.mp4", ["-pix_fmt", "yuv420p", "-metadata:s:v:0", "rotate=90"])):
        assert_model_input_equals_preprocess(
            reformatted(tmp_path, ["-c:v", "libx264", "-crf", "10", *args], name))


def test_features_equal_on_a_real_window(shared_clips: Path, tiny_embedder: Embedder) -> None:
    path = shared_clips / "real__torchcodec__nasa_13013.mp4"  # BT.709 tagged, limited range
    assert_window_features_equal(path, tiny_embedder)


def test_features_equal_on_a_made_window(tmp_path: Path, tiny_embedder: Embedder) -> None:
    src, path = tmp_path / "src.mp4", tmp_path / "bt709.mp4"
    write_clip(src, fps=25, n_frames=WINDOW_SAMPLES + 6, size=(66, 50), motion="jitter")
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(src), "-c:v", "libx264",
                    "-crf", "10", "-pix_fmt", "yuv420p", "-colorspace", "bt709", str(path)],
                   check=True, timeout=60)
    assert_window_features_equal(path, tiny_embedder)


def assert_window_features_equal(path: Path, tiny_embedder: Embedder) -> None:
    """A window's features from the device colour path equal those from FFmpeg's RGB
    (a BT.709-tagged, limited-range clip)."""
    frames = first_frames(path, WINDOW_SAMPLES)
    planes = [frame_planes(f) for f in frames]
    assert all(p is not None and p.matrix == "bt709" for p in planes)
    z_dev = tiny_embedder.embed_tensor(planes).double().numpy()  # type: ignore[arg-type]
    z_cpu = tiny_embedder.embed_tensor([frame_to_rgb(f) for f in frames]).double().numpy()
    f_dev, f_cpu = window_features(z_dev).features, window_features(z_cpu).features
    np.testing.assert_allclose(f_dev, f_cpu, rtol=1e-4, atol=1e-9)


def reformatted(tmp_path: Path, args: list[str], name: str) -> Path:
    """A 4:2:0 H.264 clip re-encoded by ffmpeg with extra output options."""
    src = tmp_path / "src.mp4"
    if not src.exists():
        write_clip(src, fps=25, n_frames=6, size=(66, 50), motion="jitter")
    out = tmp_path / name
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(src), *args, str(out)],
                   check=True, timeout=60)
    return out


@pytest.mark.parametrize(
    ("name", "args", "matrix", "full"),
    [
        ("full.mp4", ["-pix_fmt", "yuvj420p"], "bt601", True),
        ("bt709.mp4", ["-pix_fmt", "yuv420p", "-colorspace", "bt709"], "bt709", False),
        ("rot90.mp4", ["-pix_fmt", "yuv420p", "-metadata:s:v:0", "rotate=90"], "bt601", False),
        ("rot270.mp4", ["-pix_fmt", "yuv420p", "-metadata:s:v:0", "rotate=270"], "bt601", False),
    ],
)
def test_sizes_ranges_matrices_rotations(
    tmp_path: Path, name: str, args: list[str], matrix: str, full: bool
) -> None:
    path = reformatted(tmp_path, ["-c:v", "libx264", "-crf", "10", *args], name)
    for f in first_frames(path, 3):
        p = frame_planes(f)
        assert p is not None
        assert (p.matrix, p.full_range) == (matrix, full)
        assert_levels_match(levels(p), frame_to_rgb(f), name)
        got = planes_to_pixels([p], 112, CPU)
        torch.testing.assert_close(got, preprocess([frame_to_rgb(f)], 112, CPU), rtol=0,
                                   atol=1.5 / 255)


def test_nv12_planes_convert_like_planar(tmp_path: Path) -> None:
    path = reformatted(tmp_path, ["-c:v", "libx264", "-pix_fmt", "yuv420p"], "p.mp4")
    f = first_frames(path, 1)[0]
    nv12 = f.reformat(format="nv12")
    p, q = frame_planes(f), frame_planes(nv12)
    assert p is not None and q is not None
    np.testing.assert_array_equal(np.asarray(q.u), np.asarray(p.u))
    np.testing.assert_array_equal(levels(q), levels(p))


@pytest.mark.parametrize("fmt", ["yuv444p", "rgb24", "gray", "yuv420p10le", "yuv422p"])
def test_formats_outside_the_path_give_no_planes(fmt: str) -> None:
    frame = av.VideoFrame(32, 16, fmt)
    assert frame_planes(frame) is None


def test_odd_sizes_are_left_to_the_rgb_path(tmp_path: Path) -> None:
    """FFmpeg interpolates chroma for odd sizes: the device path declines them."""
    path = reformatted(tmp_path, ["-vf", "crop=65:49:0:0", "-pix_fmt", "yuv420p", "-c:v",
                                  "ffv1"], "odd.mkv")
    f = first_frames(path, 1)[0]
    assert (f.format.name, f.width, f.height) == ("yuv420p", 65, 49)
    assert frame_planes(f) is None


def test_pixel_path_auto_takes_yuv_on_cuda_only() -> None:
    assert pixel_path("auto", torch.device("cpu")) == "rgb"
    assert pixel_path("auto", torch.device("cuda")) == "yuv"
    assert pixel_path("yuv", torch.device("cpu")) == "yuv"
    assert pixel_path("rgb", torch.device("cuda")) == "rgb"


@pytest.fixture(scope="module")
def clip420(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_h264_420(tmp_path_factory.mktemp("yuvengine") / "c420.mp4", fps=12,
                          n_frames=40)


def live_frames(path: Path, planes: bool) -> Iterator[SourceFrame]:
    video = LiveVideo(str(path))
    try:
        for i, (f, pts) in enumerate(video.frames()):
            yield SourceFrame(pts_s=pts, arrival_s=0.0, index=i, image=f, to_rgb=frame_to_rgb,
                              to_planes=frame_planes if planes else None)
    finally:
        video.close()


@pytest.mark.parametrize("path_setting", ["rgb", "yuv"])
def test_engine_scores_the_same_on_either_pixel_path(
    clip420: Path, tiny_embedder: Embedder, path_setting: str
) -> None:
    """The engine with planes from the source (yuv) scores what the RGB path scores."""
    frames = list(live_frames(clip420, planes=True))
    engine = Engine(tiny_embedder, None, EngineSettings(pixel_path=path_setting,  # type: ignore[arg-type]
                                                       max_batch=8, max_backlog_per_stream=100),
                    StreamMetrics(CollectorRegistry()))
    assert engine.pixel_path == path_setting
    got: list[StreamScore] = []
    engine.register("s", got.append)
    for k, f in enumerate(frames):
        assert engine.submit(EngineSample("s", 0, k, f.pts_s, f, 0.0))
    engine.start()
    engine.stop(60)
    assert engine.error is None
    assert len(got) == len(frames) - WINDOW_SAMPLES + 1
    z = tiny_embedder.embed_tensor([f.rgb() for f in frames]).double().numpy()
    # the synthetic pattern's saturated colours put more values one level off than real
    # clips do (test_features_equal_on_a_real_window holds 1e-4 there): measured 4.4e-4
    rtol = 1e-5 if path_setting == "rgb" else 1e-3
    for sc in got:
        ref = window_features(z[sc.seq : sc.seq + WINDOW_SAMPLES]).features
        np.testing.assert_allclose(sc.score.window.features, ref, rtol=rtol, atol=1e-9)


@pytest.mark.cuda
def test_device_conversion_on_cuda_equals_cpu(shared_clips: Path) -> None:
    dev = torch.device("cuda")
    for path in clips_420(shared_clips)[:6]:
        frames = first_frames(path, 4)
        planes = [frame_planes(f) for f in frames]
        got = planes_to_pixels(planes, 224, dev).cpu()  # type: ignore[arg-type]
        want = preprocess([frame_to_rgb(f) for f in frames], 224, CPU)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5, msg=path.name)
        # planes already on the device (a GPU decoder's output) take no upload
        on_dev = [YUVPlanes(torch.from_numpy(np.asarray(p.y)).to(dev),  # type: ignore[union-attr]
                            torch.from_numpy(np.asarray(p.u)).to(dev),  # type: ignore[union-attr]
                            torch.from_numpy(np.asarray(p.v)).to(dev),  # type: ignore[union-attr]
                            p.matrix, p.full_range, p.rotation_deg)  # type: ignore[union-attr]
                  for p in planes]
        torch.testing.assert_close(planes_to_pixels(on_dev, 224, dev).cpu(), want, rtol=0,
                                   atol=1e-5)


class _HwFormat:
    def __init__(self, name: str) -> None:
        self.name = name


class _DeviceFrame:
    """An NVDEC frame as the GPU path sees it (format ``cuda`` over ``nv12``, planes
    exported with DLPack), its planes on the CPU device here: a luma ``(H, W)`` and an
    interleaved chroma ``(H/2, W/2, 2)`` tensor, as FFmpeg's CUDA frames lay them out."""

    def __init__(self, frame: av.VideoFrame, rotation: int = 0) -> None:
        nv12 = frame.reformat(format="nv12")
        w, h = frame.width, frame.height
        self.width, self.height = w, h
        self.format, self.sw_format = _HwFormat("cuda"), _HwFormat("nv12")
        self.colorspace, self.color_range = frame.colorspace, frame.color_range
        self.rotation = rotation
        luma = np.frombuffer(nv12.planes[0], np.uint8).reshape(h, -1)[:, :w]
        uv = np.frombuffer(nv12.planes[1], np.uint8).reshape(h // 2, -1)[:, :w]
        self.planes = [torch.from_numpy(luma.copy()),
                       torch.from_numpy(uv.copy()).reshape(h // 2, w // 2, 2)]


def test_a_device_frame_is_scaled_on_its_device_like_swscale_scales_a_host_frame(
        tmp_path: Path) -> None:
    """Evidence and thumbnails of NVDEC streams: the frame is shrunk and converted where
    its planes are (torch; the CPU device stands in for the GPU) and matches what
    swscale makes of the same frame on the host (both box-filtered), rotation included."""
    from monitor.media.colour import planes_to_small_rgb
    from monitor.media.decode import frame_to_small_rgb
    from monitor.media.sources.rtsp import small_rgb

    clip = write_h264_420(tmp_path / "cam.mp4", n_frames=3, size=(320, 180), crf=18)
    for frame in first_frames(clip, 3):
        want = frame_to_small_rgb(frame, 96)
        dev = _DeviceFrame(frame)
        planes = frame_planes(dev)
        assert planes is not None and isinstance(planes.y, torch.Tensor)
        got = small_rgb(dev, 96)  # what a source's SourceFrame.small_rgb calls
        assert got.shape == want.shape == (54, 96, 3) and got.dtype == np.uint8
        assert np.array_equal(got, planes_to_small_rgb(planes, 96))
        diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
        # measured: mean 1.6-1.7 levels, 99th percentile 5-11 (sharp edges, two box filters)
        assert diff.mean() < 2.5 and np.percentile(diff, 99) <= 16, (diff.mean(), diff.max())
        turned = small_rgb(_DeviceFrame(frame, rotation=90), 96)
        assert np.array_equal(turned, np.rot90(got))
        assert small_rgb(dev, 4000).shape == (180, 320, 3)  # never enlarged
    other = _DeviceFrame(first_frames(clip, 1)[0])
    other.sw_format = _HwFormat("p010le")
    with pytest.raises(ValueError, match="p010le"):
        small_rgb(other, 96)
