"""CUDA against CPU: the same frames give the same features (runs only where CUDA exists)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from monitor.core.backbone import load_backbone
from monitor.core.embed import Embedder
from monitor.core.pipeline import score_file
from tests.media import write_clip

pytestmark = pytest.mark.cuda


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cuda") / "c.mp4"
    write_clip(path, fps=30, n_frames=120, size=(96, 64), motion="jitter")
    return path


def test_cuda_float32_matches_cpu(tiny_model_dir: Path, clip: Path) -> None:
    cpu = score_file(clip, Embedder(load_backbone(str(tiny_model_dir), "cpu")), all_windows=True)
    gpu_emb = Embedder(load_backbone(str(tiny_model_dir), "cuda"))
    gpu = score_file(clip, gpu_emb, all_windows=True)
    np.testing.assert_allclose(gpu.centre.window.features, cpu.centre.window.features,
                               rtol=1e-3, atol=1e-3)
    assert cpu.windows is not None and gpu.windows is not None
    for a, b in zip(cpu.windows, gpu.windows, strict=True):
        np.testing.assert_allclose(b.window.features, a.window.features, rtol=1e-3, atol=1e-3)


def test_cuda_bfloat16_features_stay_close(tiny_model_dir: Path, clip: Path) -> None:
    cpu = score_file(clip, Embedder(load_backbone(str(tiny_model_dir), "cpu")))
    bf = score_file(clip, Embedder(load_backbone(str(tiny_model_dir), "cuda", "bfloat16")))
    rel = np.abs(bf.centre.window.features - cpu.centre.window.features) / (
        np.abs(cpu.centre.window.features) + 1e-6)
    assert np.all(rel[13:17] < 0.05)  # distance statistics within 5 %
    assert np.all(np.abs(bf.centre.window.features[17:20] - cpu.centre.window.features[17:20])
                  < 5.0)  # mean/min/max angle within 5 degrees
