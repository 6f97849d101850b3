"""Embedding-stage throughput: the whole scoring path against the bare model call.

Prints a Markdown table with, on one machine and one backbone, side by side:

* the device's dense float32 matmul rate (GFLOP/s), the ceiling;
* the bare model call (``Embedder.forward`` on ready pixel tensors) at batch B:
  frames/s and achieved GFLOP/s (fraction of the matmul ceiling);
* preprocessing alone (uint8 -> float, bicubic antialiased resize);
* decode + sample alone (PyAV, 11.5 Hz grid, RGB conversion);
* the full path (`score_file` with every window: decode + preprocess + model +
  geometry), as frames/s and as a ratio to the bare model call.

Usage: python -m bench.bench_embed [--arch vits14|tiny] [--device cpu|cuda]
       [--batch 8] [--dtype float32|bfloat16|float16] [--clip FILE] [--seconds 5]
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
    table,
    timed,
    vit_flops_per_frame,
)
from monitor.core.backbone import load_backbone
from monitor.core.embed import Embedder, preprocess
from monitor.core.geometry import WindowRing
from monitor.core.pipeline import score_file
from monitor.media.decode_file import probe, sample_file
from monitor.media.sampler import grid_times

DEFAULT_CLIP = (
    Path(__file__).resolve().parents[1].parent / "shared/clips/real__mmaction2__test2.mp4"
)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--arch", choices=["vits14", "tiny"], default="vits14")
    ap.add_argument("--model", help="a real model reference instead of a random --arch")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--clip", type=Path, default=DEFAULT_CLIP)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()

    ref = args.model or str(random_backbone_dir(args.arch))
    bb = load_backbone(ref, args.device, args.dtype)
    dev = bb.device
    emb = Embedder(bb, batch_size=args.batch)
    info = probe(args.clip)
    samples: list[np.ndarray] = []
    sample_file(
        args.clip, {"g": grid_times(info.duration_s)}, lambda _n, s: samples.append(s.frame.rgb)
    )
    frames = samples[: args.batch]
    while len(frames) < args.batch:
        frames = frames + frames
    frames = frames[: args.batch]

    rows: list[list[object]] = []
    ceiling = matmul_gflops(dev, dtype=torch.float32 if args.dtype == "float32" else bb.dtype)
    rows.append([f"dense matmul {args.dtype} (2048^3)", "-", "-", ceiling, "1.00 (ceiling)"])

    px = preprocess(frames, bb.image_size, dev)
    per, _ = timed(lambda: emb.forward(px), dev, args.seconds)
    bare_fps = args.batch / per
    flops = vit_flops_per_frame(
        bb.hidden_size,
        len(bb.model.encoder.layer),
        bb.tokens,  # type: ignore[union-attr]
        bb.model.config.mlp_ratio,
        bb.patch_size,
    )  # type: ignore[union-attr]
    model_gflops = bare_fps * flops / 1e9
    rows.append(
        [
            f"bare model call, batch {args.batch}",
            f"{bare_fps:.2f}",
            "1.00",
            model_gflops,
            f"{model_gflops / ceiling:.2f}",
        ]
    )

    per_pre, _ = timed(lambda: preprocess(frames, bb.image_size, dev), dev, min(args.seconds, 2))
    rows.append(
        [
            f"preprocess only ({frames[0].shape[1]}x{frames[0].shape[0]} -> 224)",
            f"{args.batch / per_pre:.1f}",
            f"{(args.batch / per_pre) / bare_fps:.1f}",
            "-",
            "-",
        ]
    )

    t0 = time.perf_counter()
    n_dec = 0

    def count(_n: str, _s: object) -> None:
        nonlocal n_dec
        n_dec += 1

    sample_file(args.clip, {"g": grid_times(info.duration_s)}, count)
    dec_fps = n_dec / (time.perf_counter() - t0)
    rows.append(
        [
            f"decode + sample only ({info.codec} {info.width}x{info.height})",
            f"{dec_fps:.1f}",
            f"{dec_fps / bare_fps:.1f}",
            "-",
            "-",
        ]
    )

    traj = WindowRing(bb.embedding_dim, dev)
    zs = torch.randn(64, bb.embedding_dim, device=dev)
    i = 0

    def geo() -> None:
        nonlocal i
        traj.update(zs[i % 64])
        traj.features()
        i += 1

    per_geo, _ = timed(geo, dev, 1.0)
    rows.append(
        [
            f"geometry only (D={bb.embedding_dim}, float64)",
            f"{1 / per_geo:.0f}",
            f"{(1 / per_geo) / bare_fps:.0f}",
            "-",
            "-",
        ]
    )

    score_file(args.clip, emb, all_windows=True)  # warm-up
    t0 = time.perf_counter()
    res = score_file(args.clip, emb, all_windows=True)
    full_s = time.perf_counter() - t0
    full_fps = res.frames_embedded / full_s
    rows.append(
        [
            f"full path: score_file, all windows ({res.frames_embedded} frames)",
            f"{full_fps:.2f}",
            f"{full_fps / bare_fps:.2f}",
            full_fps * flops / 1e9,
            f"{full_fps * flops / 1e9 / ceiling:.2f}",
        ]
    )

    print(f"machine: {machine(dev)}")
    print(
        f"backbone: {'random ' + args.arch if not args.model else args.model} "
        f"({bb.tokens} tokens x {bb.hidden_size}, {flops / 1e9:.2f} GFLOP/frame), "
        f"dtype {args.dtype}, batch {args.batch}, clip {args.clip.name}\n"
    )
    print(table(["stage", "frames/s", "x bare model", "GFLOP/s", "of matmul ceiling"], rows))


if __name__ == "__main__":
    main()
