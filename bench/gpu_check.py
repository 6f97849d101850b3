"""One-shot GPU check: CUDA vs CPU feature parity (float32), bfloat16/float16 drift, throughput.

Uses a randomly initialised DINOv2 ViT-S/14 (seeded; no weights needed) and the clips in
``--clips``. Prints Markdown tables for BENCHMARKS.md.

Usage: python -m bench.gpu_check --clips DIR [--seconds 3] [--dtypes float32,tf32,...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import (
    machine,
    matmul_gflops,
    random_backbone_dir,
    sync,
    table,
    timed,
    vit_flops_per_frame,
)
from monitor.core.backbone import load_backbone
from monitor.core.embed import Embedder, preprocess
from monitor.core.pipeline import score_file
from monitor.types import FEATURE_NAMES


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=Path, required=True)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--device", default="cuda", help="cpu only for a dry run of this script")
    ap.add_argument("--arch", default="vits14", choices=["vits14", "tiny"])
    ap.add_argument(
        "--dtypes",
        default="float32,tf32,float16-mixed,bfloat16-mixed,float16,bfloat16,"
        "float16-mixed@reduce-overhead",
        help="model precisions to compare; NAME@MODE adds torch.compile(mode=MODE)",
    )
    ap.add_argument("--batches", default="8,24,64,128,256")
    args = ap.parse_args()
    clips = sorted(p for p in args.clips.iterdir() if p.suffix in {".mp4", ".avi", ".gif", ".mkv"})
    ref = str(random_backbone_dir(args.arch, seed=0))
    dev = torch.device(args.device)
    print(f"machine: {machine(dev)}; CPU reference: {torch.get_num_threads()} threads")
    print(f"backbone: random DINOv2 {args.arch} (seed 0), all 257 tokens per frame\n")

    cpu = Embedder(load_backbone(ref, "cpu"), batch_size=24)
    runs: dict[str, Embedder] = {}
    for name in args.dtypes.split(","):
        dtype, _, mode = name.partition("@")
        runs[name] = Embedder(load_backbone(ref, dev, dtype), batch_size=24,
                              compile=mode or "off")  # type: ignore[arg-type]
    feats: dict[str, list[np.ndarray]] = {k: [] for k in ["cpu", *runs]}
    for clip in clips:
        feats["cpu"].append(score_file(clip, cpu).centre.window.features)
        for name, emb in runs.items():
            feats[name].append(score_file(clip, emb).centre.window.features)
    base = np.stack(feats["cpu"])
    rows = []
    groups = {
        "d_0..d_6": range(0, 7),
        "theta_0..theta_5": range(7, 13),
        "d mean/min/max": range(13, 16),
        "d var": [16],
        "theta mean/min/max": range(17, 20),
        "theta var": [20],
    }
    for name in runs:
        got = np.stack(feats[name])
        rel = np.abs(got - base) / np.maximum(np.abs(base), 1e-9)
        absd = np.abs(got - base)
        rows.append(
            [f"{dev.type} {name} vs CPU float32"]
            + [
                f"{rel[:, list(idx)].max():.2e} rel / {absd[:, list(idx)].max():.2e} abs"
                for idx in groups.values()
            ]
        )
    print(
        f"Feature agreement on {len(clips)} clips (centred window; max over clips and features):\n"
    )
    print(table(["run", *groups.keys()], rows))
    print()
    worst = {
        name: FEATURE_NAMES[
            int(
                np.argmax(
                    (np.abs(np.stack(feats[name]) - base) / np.maximum(np.abs(base), 1e-9)).max(
                        axis=0
                    )
                )
            )
        ]
        for name in runs
    }
    print(f"worst feature per run: {worst}\n")

    # throughput of the bare model call and the full path, per dtype and batch size
    clip = max(clips, key=lambda p: p.stat().st_size)
    top = max(int(b) for b in args.batches.split(","))
    frames = [
        np.random.default_rng(i).integers(0, 256, (480, 720, 3), dtype=np.uint8)
        for i in range(top)
    ]
    rows = []
    bb32 = runs["float32"].backbone
    cfg = bb32.model.config  # type: ignore[union-attr]
    flops = vit_flops_per_frame(cfg.hidden_size, cfg.num_hidden_layers, 257, cfg.mlp_ratio, 14)
    for name, emb in runs.items():
        half = emb.backbone.autocast or emb.backbone.dtype
        ceiling = matmul_gflops(dev, 8192 if dev.type == "cuda" else 512, half, 1.0)
        batches = [int(b) for b in args.batches.split(",")]
        if emb.compile != "off":  # each size compiles once (a minute): the largest <= 128
            batches = [max(b for b in batches if b <= 128)]
        for batch in batches:
            emb.batch_size = batch
            emb._buckets = (batch,) if emb.compile != "off" else ()
            px = preprocess(frames[:batch], 224, dev)
            per, _ = timed(lambda px=px, emb=emb: emb.forward(px), dev, args.seconds)
            fps = batch / per
            rows.append(
                [
                    name,
                    batch,
                    f"{fps:.0f}",
                    f"{fps * flops / 1e12:.1f}",
                    f"{ceiling / 1e3:.0f}",
                    f"{fps * flops / 1e9 / ceiling:.2f}",
                ]
            )
        if emb.compile != "off":
            continue
        emb.batch_size = 24
        score_file(clip, emb, all_windows=True)
        sync(dev)
        t0 = time.perf_counter()
        res = score_file(clip, emb, all_windows=True)
        sync(dev)
        el = time.perf_counter() - t0
        rows.append(
            [
                f"{name} full path ({clip.name}, all windows)",
                24,
                f"{res.frames_embedded / el:.0f}",
                "-",
                "-",
                "-",
            ]
        )
    print(
        table(["dtype", "batch", "frames/s", "model TFLOP/s", "matmul TFLOP/s", "fraction"], rows)
    )
    if dev.type != "cuda":
        return
    print(
        f"\npeak CUDA memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB; "
        f"fp32 weights: {sum(p.numel() for p in bb32.model.parameters()) * 4 / 2**20:.0f} MiB"
    )


if __name__ == "__main__":
    main()
