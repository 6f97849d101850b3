"""Shared helpers for the benchmarks: backbones without downloads, timing, tables."""

from __future__ import annotations

import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

VITS14 = dict(
    hidden_size=384,
    num_hidden_layers=12,
    num_attention_heads=6,
    mlp_ratio=4,
    patch_size=14,
    image_size=518,
)
TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    mlp_ratio=2,
    patch_size=14,
    image_size=518,
)


def random_backbone_dir(arch: str, seed: int = 0) -> Path:
    """Save a randomly initialised DINOv2 of the given architecture ('vits14' or 'tiny').

    Speed does not depend on the weights, so this stands in for the real ViT-S/14
    on machines without the checkpoint.
    """
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    cfg = Dinov2Config(**(VITS14 if arch == "vits14" else TINY))
    d = Path(tempfile.mkdtemp(prefix=f"restrav-{arch}-"))
    Dinov2Model(cfg).save_pretrained(d)
    return d


def vit_flops_per_frame(
    hidden: int, layers: int, tokens: int, mlp_ratio: float, patch: int = 14
) -> float:
    """Multiply-add FLOPs (2 per MAC) of one DINOv2 forward at ``tokens`` tokens."""
    c, n = hidden, tokens
    per_layer = 4 * n * c * c + 2 * n * n * c + 2 * n * c * int(c * mlp_ratio)
    patch_embed = (n - 1) * (3 * patch * patch) * c
    return 2.0 * (layers * per_layer + patch_embed)


def sync(device: torch.device) -> None:
    """Wait for queued device work (CUDA) so wall-clock timings are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(
    fn: Callable[[], object], device: torch.device, min_s: float = 3.0, warmup: int = 1
) -> tuple[float, int]:
    """Run ``fn`` repeatedly for at least ``min_s`` seconds; (seconds per call, calls)."""
    for _ in range(warmup):
        fn()
    sync(device)
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        sync(device)
        el = time.perf_counter() - t0
        if el >= min_s:
            return el / n, n


def matmul_gflops(
    device: torch.device, n: int = 2048, dtype: torch.dtype = torch.float32, min_s: float = 2.0
) -> float:
    """Sustained dense matmul rate of the device in GFLOP/s."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    per, _ = timed(lambda: a @ b, device, min_s)
    return 2 * n**3 / per / 1e9


def machine(device: torch.device) -> str:
    """One line naming the machine the numbers came from."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return f"{name} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    return (
        f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} torch "
        f"threads, torch {torch.__version__}"
    )


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A Markdown table."""

    def fmt(v: object) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


def window_features_of(
    emb: Any, windows: list[Any], zero_step_angle_deg: float
) -> tuple[Any, list[Any]]:
    """The 21 features of each window (stacked) and its float64 embeddings, with ``emb``
    (an Embedder) as it is configured now."""
    import numpy as np

    from monitor.core.geometry import window_features

    zs = [emb.embed(w).astype(np.float64) for w in windows]
    feats = [window_features(z, zero_step_angle_deg=zero_step_angle_deg).features for z in zs]
    return np.stack(feats), zs
