"""The per-frame resize (monitor/core/resize.py) and where it is used: it computes SPEC
section 2's pixels (torch's bicubic antialiased interpolate) to float32 rounding, on real
decoded frames and on shapes that shrink, grow and keep an axis; a CPU runtime backend
in a single-threaded torch prepares frames with it, in the engine's conversion threads,
and the features stay those of the reference path; torch's own forward keeps
interpolate. Speed is bench/'s (bench_cpu_paths), never asserted here."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from monitor.config import EngineSettings
from monitor.core import resize
from monitor.core.backbone import load_backbone
from monitor.core.embed import Embedder, preprocess
from monitor.core.geometry import window_features
from monitor.live.batch import BatchScorer, EngineSample
from monitor.media.decode_file import probe, sample_file
from monitor.media.sampler import window_times

PIXEL_TOL = 2e-6
"""Largest |difference| on the [0, 1] scale: float32 sums taken in another order."""


@pytest.fixture
def single_threaded() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _frames(path: Path, n: int) -> list[np.ndarray]:
    info = probe(path)
    frames: list[np.ndarray] = []
    sample_file(path, {"w": window_times(0.0)[:n]}, lambda _n, s: frames.append(s.frame.rgb),
                info=info)
    return frames


@pytest.fixture(scope="module")
def real_frames(shared_clips: Path) -> list[np.ndarray]:
    """A few decoded frames of three shared clips of different sizes."""
    clips = sorted(p for p in shared_clips.iterdir() if p.suffix == ".mp4")
    return [f for p in clips[:3] for f in _frames(p, 3)]


def test_real_frames_get_interpolates_pixels(real_frames: list[np.ndarray]) -> None:
    for frame in real_frames:
        ref = preprocess([frame], 224)[0]
        got = resize.frame_pixels(frame, 224)
        assert got.shape == (3, 224, 224) and got.dtype == torch.float32
        assert (got - ref).abs().max().item() <= PIXEL_TOL, frame.shape


@pytest.mark.parametrize("shape", [(720, 1280), (100, 50), (224, 300), (224, 224), (17, 600)])
def test_any_shape_shrinking_or_growing(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    frame = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    for size in (224, 112):
        ref = preprocess([frame], size)[0]
        got = resize.frame_pixels(frame, size)
        assert (got - ref).abs().max().item() <= PIXEL_TOL, (shape, size)


def test_a_frame_not_rgb_uint8_is_refused() -> None:
    with pytest.raises(ValueError, match="uint8"):
        resize.frame_pixels(np.zeros((10, 10, 3), dtype=np.float32), 224)  # type: ignore[arg-type]


def _runner(backbone):  # type: ignore[no-untyped-def]
    """A runtime stand-in: the same float32 model called outside the Embedder (as an
    exported graph would compute it)."""

    def run(pixels: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out: torch.Tensor = backbone.model(pixel_values=pixels).last_hidden_state
            return out

    return run


def test_runtime_backend_prepares_frames_only_single_threaded(
    tiny_model_dir: Path, single_threaded: None
) -> None:
    bb = load_backbone(str(tiny_model_dir), "cpu")
    assert Embedder(bb, runner=_runner(bb)).prepares_frames
    # torch's own forward keeps interpolate (its behaviour does not change)
    assert not Embedder(bb).prepares_frames
    torch.set_num_threads(2)
    assert not Embedder(bb, runner=_runner(bb)).prepares_frames


class _Frame:
    def __init__(self, rgb: np.ndarray) -> None:
        self._rgb = rgb

    def rgb(self) -> np.ndarray:
        return self._rgb

    def planes(self) -> None:
        return None


def test_engine_conversion_threads_prepare_and_features_stay(
    tiny_model_dir: Path, real_frames: list[np.ndarray], single_threaded: None
) -> None:
    bb = load_backbone(str(tiny_model_dir), "cpu", image_size=112)
    fast = Embedder(bb, batch_size=32, runner=_runner(bb))
    ref = Embedder(bb, batch_size=32)
    frames = (real_frames * 8)[:24]
    scorer = BatchScorer(fast, None, EngineSettings(convert_threads=3), None, lambda _s: 1)
    try:
        assert scorer.prepares_frames
        samples = [EngineSample("s", 0, k, k / 11.5, _Frame(f), 0.0)
                   for k, f in enumerate(frames)]
        converted = scorer.convert_all([s.frame for s in samples])
        assert all(isinstance(c, torch.Tensor) and c.shape == (3, 112, 112) for c in converted)
        z = scorer.embed(samples).z
        assert z is not None
    finally:
        scorer.close()
    z_ref = ref.embed_tensor(frames)
    assert torch.allclose(z, z_ref, rtol=1e-4, atol=1e-5)
    got = window_features(z.double().numpy()).features
    want = window_features(z_ref.double().numpy()).features
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None,
                    reason="onnxruntime not installed (the cpu-fast extra)")
def test_build_embedder_runs_torch_single_threaded_with_a_runtime(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from monitor.config import Settings
    from workers.common import build_embedder

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        settings = Settings.model_validate({"model": {
            "ref": str(tiny_model_dir), "device": "cpu", "backend": "onnxruntime",
            "graph_cache": str(tmp_path)}})
        emb = build_embedder(settings)
        assert torch.get_num_threads() == 1 and emb.prepares_frames
    finally:
        torch.set_num_threads(threads)
