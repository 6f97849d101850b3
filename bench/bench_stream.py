"""Benchmark the streaming engine; prints markdown tables (record them in BENCHMARKS.md).

Three measurements, side by side in one run, on one backbone and one device:

1. Incremental vs recompute (hop 1): windows scored per second by the engine
   (each frame embedded once, one distance and one angle per sample on the
   device) against recomputing each window from its 24 frames (24 embeddings +
   batch geometry per window). The ratio is the point of SPEC section 8.
2. Engine overhead against the bare model call: per frame, the model forward
   alone (``Embedder.forward`` on preprocessed pixels), preprocessing +
   forward (``embed_tensor``), and the engine's full step (RGB conversion of a
   decoded frame, preprocess, forward, ring update, features).
3. Concurrent streams: S live streams each submitting samples at 11.5 Hz in
   real time to the threaded engine for ``--seconds``; the sustained sample
   rate per stream, windows skipped (overload), and p50/p95 latency from frame
   arrival to score delivered.

Models: ``--tiny`` (default: a random 2-layer hidden-32 DINOv2, the test model),
``--random-vits14`` (a random DINOv2 ViT-S/14, no weights needed: the real
cost), or ``--model REF`` (anything ``load_backbone`` takes). Frames are real
PyAV video frames (yuv420p), converted to RGB by the engine like decoded ones.

Examples:
  python bench/bench_stream.py                          # CPU, tiny model
  python bench/bench_stream.py --device cuda --random-vits14 --streams 1,8,32,64,128
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitor.config import MODEL_DTYPES, EngineSettings  # noqa: E402
from monitor.core.backbone import load_backbone  # noqa: E402
from monitor.core.embed import Embedder, preprocess  # noqa: E402
from monitor.core.geometry import window_features  # noqa: E402
from monitor.live.batch import EngineSample  # noqa: E402
from monitor.live.engine import Engine  # noqa: E402
from monitor.media.colour import YUVPlanes, frame_planes  # noqa: E402
from monitor.types import (  # noqa: E402
    SAMPLE_INTERVAL_S,
    WINDOW_SAMPLES,
    StreamScore,
)


class AVFrame:
    """A decoded-like yuv420p frame; ``rgb()`` converts it as the engine does for real feeds."""

    def __init__(self, frame: Any) -> None:
        self.frame = frame

    def rgb(self) -> np.ndarray:
        out: np.ndarray = self.frame.to_ndarray(format="rgb24")
        return out

    def planes(self) -> YUVPlanes | None:
        return frame_planes(self.frame)


def make_frames(n: int, width: int, height: int, seed: int = 0) -> list[AVFrame]:
    """Distinct frames: a smooth drift plus noise, encoded to yuv420p like a decoder's output."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    out = []
    for i in range(n):
        img = np.roll(base, shift=(i * 3, i * 2), axis=(0, 1))
        img = np.clip(img.astype(np.int16) + rng.integers(-8, 8, img.shape), 0, 255)
        vf = av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24").reformat(
            format="yuv420p"
        )
        out.append(AVFrame(vf))
    return out


def build_model(args: argparse.Namespace, tmp: Path) -> tuple[Embedder, str]:
    """Save a random model (or use --model) and load it through the real loader."""
    if args.model:
        ref, name = args.model, args.model
    else:
        from transformers import Dinov2Config, Dinov2Model

        torch.manual_seed(0)
        if args.random_vits14:
            cfg = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                               mlp_ratio=4, patch_size=14, image_size=518)
            name = "random DINOv2 ViT-S/14 (hidden 384, 12 layers; D = 98,688)"
        else:
            cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               mlp_ratio=2, patch_size=14, image_size=518)
            name = "tiny random DINOv2 (hidden 32, 2 layers; D = 8,224) - a stand-in"
        Dinov2Model(cfg).save_pretrained(tmp / "model")
        ref = str(tmp / "model")
    backbone = load_backbone(ref, args.device, args.dtype, args.image_size)
    return Embedder(backbone, batch_size=args.batch), name


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def samples_for(stream: str, frames: list[AVFrame], n: int, start_k: int = 0) -> list[EngineSample]:
    return [
        EngineSample(stream, 0, start_k + k, (start_k + k) * SAMPLE_INTERVAL_S,
                     frames[(start_k + k) % len(frames)], time.monotonic())
        for k in range(n)
    ]


def bench_incremental_vs_recompute(
    emb: Embedder, frames: list[AVFrame], n_windows: int, batch: int
) -> dict[str, float]:
    """Section 1: windows/s of the engine vs recomputing each window, hop 1."""
    n_samples = n_windows + WINDOW_SAMPLES - 1
    engine = Engine(emb, None, EngineSettings(max_batch=batch, hop=1))
    got: list[StreamScore] = []
    engine.register("s", got.append)
    # warm-up (allocator, kernels)
    engine.process(samples_for("w", frames, batch))
    smp = samples_for("s", frames, n_samples)
    sync(emb.device)
    t0 = time.perf_counter()
    for i in range(0, n_samples, batch):
        engine.process(smp[i : i + batch])
    sync(emb.device)
    t_inc = time.perf_counter() - t0
    assert len(got) == n_windows, (len(got), n_windows)

    # recompute: each window from its 24 frames (24 conversions + embeddings + batch geometry)
    n_re = min(n_windows, 30)
    t0 = time.perf_counter()
    for w in range(n_re):
        rgbs = [smp[w + k].frame.rgb() for k in range(WINDOW_SAMPLES)]
        z = emb.embed_tensor(rgbs)
        window_features(z.double().cpu().numpy())
    sync(emb.device)
    t_re = time.perf_counter() - t0
    inc_ws = n_windows / t_inc
    re_ws = n_re / t_re
    return {"incremental_windows_per_s": inc_ws, "recompute_windows_per_s": re_ws,
            "ratio": inc_ws / re_ws, "windows": n_windows, "recompute_windows": n_re}


def bench_overhead(
    emb: Embedder, frames: list[AVFrame], batch: int, reps: int, pixel_path: str = "auto"
) -> dict[str, Any]:
    """Section 2: per-frame ms of the bare forward, embed_tensor and the engine step."""
    rgbs = [f.rgb() for f in frames[:batch]]
    px = preprocess(rgbs, emb.backbone.image_size, emb.device, emb.normalize)
    emb.forward(px)
    sync(emb.device)

    def timed(fn: Any) -> float:
        best = []
        for _ in range(reps):
            sync(emb.device)
            t0 = time.perf_counter()
            fn()
            sync(emb.device)
            best.append(time.perf_counter() - t0)
        return statistics.median(best) / batch * 1000

    bare = timed(lambda: emb.forward(px))
    embed = timed(lambda: emb.embed_tensor(rgbs))
    engine = Engine(emb, None, EngineSettings(max_batch=batch, pixel_path=pixel_path))  # type: ignore[arg-type]
    engine.register("s", lambda sc: None)
    k = [0]

    def step() -> None:
        engine.process(samples_for("s", frames, batch, start_k=k[0]))
        k[0] += batch

    step()
    eng = timed(step)
    return {"bare_forward_ms": bare, "embed_tensor_ms": embed, "engine_ms": eng,
            "overhead_vs_bare_pct": 100 * (eng - bare) / bare, "pixel_path": engine.pixel_path}


async def bench_streams(
    emb: Embedder, frames: list[AVFrame], n_streams: int, seconds: float, batch: int,
    max_wait_ms: float,
) -> dict[str, float]:
    """Section 3: S real-time streams at 11.5 Hz into the threaded engine."""
    settings = EngineSettings(max_batch=batch, max_wait_ms=max_wait_ms,
                              queue_samples=max(256, 8 * n_streams),
                              max_backlog_per_stream=WINDOW_SAMPLES, hop=1)
    from prometheus_client import CollectorRegistry

    from monitor.metrics import StreamMetrics

    registry = CollectorRegistry()
    engine = Engine(emb, None, settings, StreamMetrics(registry))
    lat: list[float] = []
    lock = threading.Lock()
    done = {f"s{i}": 0 for i in range(n_streams)}

    def on_score(sc: StreamScore) -> None:
        with lock:
            lat.append(time.monotonic() - sc.arrival_s)

    for sid in done:
        engine.register(sid, on_score)
    engine.start(asyncio.get_running_loop())
    t_start = time.monotonic()
    submitted = dict.fromkeys(done, 0)
    accepted = dict.fromkeys(done, 0)

    async def feed(sid: str, offset: float) -> None:
        k = 0
        await asyncio.sleep(offset)
        t0 = time.monotonic()
        while time.monotonic() - t_start < seconds:
            s = EngineSample(sid, 0, k, k * SAMPLE_INTERVAL_S, frames[k % len(frames)],
                             time.monotonic())
            submitted[sid] += 1
            if engine.submit(s):
                accepted[sid] += 1
            k += 1
            await asyncio.sleep(max(0.0, t0 + k * SAMPLE_INTERVAL_S - time.monotonic()))

    await asyncio.gather(*(feed(sid, i * SAMPLE_INTERVAL_S / n_streams)
                           for i, sid in enumerate(done)))
    await engine.drain(60)
    elapsed = time.monotonic() - t_start
    skipped = sum(
        registry.get_sample_value("restrav_stream_windows_skipped_total",
                                  {"stream": sid, "reason": "overload"}) or 0
        for sid in done
    )
    per_stream = statistics.mean(accepted[s] for s in done) / elapsed
    lat_ms = sorted(x * 1000 for x in lat) or [float("nan")]
    return {
        "streams": n_streams,
        "offered_hz_per_stream": statistics.mean(submitted[s] for s in done) / elapsed,
        "sustained_hz_per_stream": per_stream,
        "windows_scored": len(lat),
        "windows_skipped": skipped,
        "p50_ms": lat_ms[len(lat_ms) // 2],
        "p95_ms": lat_ms[min(len(lat_ms) - 1, int(len(lat_ms) * 0.95))],
    }


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--tiny", action="store_true", help="tiny random DINOv2 (default)")
    g.add_argument("--random-vits14", action="store_true", help="random DINOv2 ViT-S/14")
    g.add_argument("--model", help="a model reference load_backbone accepts")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=MODEL_DTYPES)
    p.add_argument("--pixel-path", default="auto", choices=["auto", "rgb", "yuv"],
                   help="engine.pixel_path (yuv: planes converted on the device)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=16, help="engine max batch")
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--windows", type=int, default=60, help="windows for section 1")
    p.add_argument("--streams", default="1,2,4", help="stream counts for section 3")
    p.add_argument("--seconds", type=float, default=8.0, help="duration per stream count")
    p.add_argument("--frame-size", default="640x360", help="decoded frame size WxH")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    w, h = (int(x) for x in args.frame_size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        emb, model_name = build_model(args, Path(tmp))
    frames = make_frames(48, w, h)
    dev = emb.device
    print(f"# bench_stream: {model_name}")
    print(f"device: {device_name(dev)}; dtype {args.dtype}; input {args.image_size} px; "
          f"frames {w}x{h} yuv420p; engine max batch {args.batch}; torch {torch.__version__}\n")

    r1 = bench_incremental_vs_recompute(emb, frames, args.windows, args.batch)
    print("## 1. Incremental engine vs recomputing each window (hop 1)\n")
    print("| method | windows/s |")
    print("|---|---|")
    inc = r1["incremental_windows_per_s"]
    print(f"| incremental engine (each frame embedded once) | {inc:.1f} |")
    print(f"| recompute each window from its 24 frames | {r1['recompute_windows_per_s']:.2f} |")
    print(f"| **ratio** | **{r1['ratio']:.1f}x** |\n")

    r2 = bench_overhead(emb, frames, args.batch, reps=5, pixel_path=args.pixel_path)
    print(f"## 2. Engine overhead against the bare model call (batch {args.batch})\n")
    print("| step | ms per frame |")
    print("|---|---|")
    print(f"| bare model forward (preprocessed pixels) | {r2['bare_forward_ms']:.2f} |")
    print(f"| preprocess + forward (embed_tensor) | {r2['embed_tensor_ms']:.2f} |")
    print(f"| engine step ({r2['pixel_path']} pixel path: conversion, resize, forward, ring, "
          f"features) | {r2['engine_ms']:.2f} |")
    print(f"| engine overhead vs bare forward | {r2['overhead_vs_bare_pct']:+.0f} % |\n")

    rows = []
    for n in (int(x) for x in args.streams.split(",")):
        rows.append(asyncio.run(bench_streams(emb, frames, n, args.seconds, args.batch,
                                              args.max_wait_ms)))
    print(f"## 3. Concurrent live streams at 11.5 Hz ({args.seconds:.0f} s each)\n")
    print("| streams | offered Hz/stream | sustained Hz/stream | windows scored | windows skipped "
          "| p50 latency ms | p95 latency ms |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['streams']} | {r['offered_hz_per_stream']:.2f} | "
              f"{r['sustained_hz_per_stream']:.2f} | {r['windows_scored']} | "
              f"{r['windows_skipped']:.0f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} |")
    if dev.type == "cuda":
        print(f"\npeak device memory: {torch.cuda.max_memory_allocated(dev) / 2**20:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps({"model": model_name, "device": device_name(dev),
                                         "incremental": r1, "overhead": r2, "streams": rows},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
