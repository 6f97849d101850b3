"""Memory soak of the streaming service under reconnect churn; prints an RSS table.

A local HTTP server serves a short encoded clip; S streams of kind ``http`` read
it through the real PyAV source. Each time a stream reaches the end of the clip
its connection ends (a live feed's end means the publisher went away), so the
stream manager reconnects with backoff: a reconnect every second or two per
stream, each with a new decode thread, buffer and sampler segment. On top of
that, every ``--churn-s`` seconds one stream is removed and added back (its
device ring freed and reallocated) and one is paused and resumed. The engine
scores every window with the real (tiny) model. Resident memory (RSS) is
sampled every ``--every-s`` seconds; a flat RSS column is the result.

Example:
  python bench/soak_stream.py --seconds 600 --streams 4
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from aiohttp import web
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitor.config import StreamSpec, load_settings  # noqa: E402
from monitor.core.backbone import load_backbone  # noqa: E402
from monitor.core.embed import Embedder  # noqa: E402
from monitor.live.engine import Engine  # noqa: E402
from monitor.live.service import StreamManager  # noqa: E402
from monitor.live.sinks.base import BufferedSink, Item  # noqa: E402
from monitor.media.decode_guard import rss_bytes  # noqa: E402
from monitor.metrics import StreamMetrics  # noqa: E402


class CountingSink(BufferedSink):
    """Counts what it is given and keeps nothing (so the sink itself cannot grow)."""

    name = "count"

    def __init__(self) -> None:
        super().__init__(buffer_max=10_000)
        self.count = 0

    async def write(self, items: list[Item]) -> None:
        self.count += len(items)


def make_clip(path: Path) -> None:
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
         "testsrc2=size=320x240:rate=25", "-t", "3", "-c:v", "libx264", "-g", "25",
         "-pix_fmt", "yuv420p", "-preset", "ultrafast", str(path)],
        check=True,
    )


def tiny_model(directory: Path) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             mlp_ratio=2, patch_size=14, image_size=518)).save_pretrained(directory)
    return directory


async def soak(args: argparse.Namespace, tmp: Path) -> list[tuple[float, ...]]:
    clip = tmp / "clip.mp4"
    make_clip(clip)
    app = web.Application()
    app.router.add_static("/media", tmp)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]

    torch.set_num_threads(1)
    emb = Embedder(load_backbone(str(tiny_model(tmp / "model")), "cpu", image_size=112),
                   batch_size=16)
    settings = load_settings(serve={
        "source": {"stall_after_s": 5, "stall_reconnect_s": 10,
                   "backoff": {"floor_s": 0.2, "cap_s": 1.0, "reset_after_s": 60}},
        "engine": {"max_batch": 16, "max_wait_ms": 10, "hop": 1},
    }).serve
    registry = CollectorRegistry()
    metrics = StreamMetrics(registry)
    engine = Engine(emb, None, settings.engine, metrics)
    engine.start(asyncio.get_running_loop())
    sink = CountingSink()
    await sink.start()
    mgr = StreamManager(engine, sink, settings, metrics)
    specs = [StreamSpec(id=f"s{i}", url=f"http://127.0.0.1:{port}/media/clip.mp4")
             for i in range(args.streams)]
    for spec in specs:
        await mgr.add(spec)

    rows: list[tuple[float, ...]] = []
    t0 = time.monotonic()
    next_sample = t0
    next_churn = t0 + args.churn_s
    churns = 0

    def total(name: str) -> float:
        return sum(s.value for m in registry.collect() if m.name == name.removesuffix("_total")
                   for s in m.samples if s.name == name)

    while time.monotonic() - t0 < args.seconds:
        now = time.monotonic()
        if now >= next_churn:
            victim = specs[churns % len(specs)]
            await mgr.remove(victim.id)
            await mgr.add(victim)
            other = specs[(churns + 1) % len(specs)]
            await mgr.pause(other.id)
            await mgr.resume(other.id)
            churns += 1
            next_churn += args.churn_s
        if now >= next_sample:
            gc.collect()
            rows.append((
                now - t0,
                rss_bytes() / 2**20,
                total("restrav_stream_reconnects_total"),
                total("restrav_stream_windows_scored_total"),
                float(churns),
                float(threading.active_count()),
                float(len(gc.get_objects())),
            ))
            r = rows[-1]
            print(f"| {r[0]:6.0f} | {r[1]:8.1f} | {r[2]:6.0f} | {r[3]:8.0f} | {r[4]:4.0f} "
                  f"| {r[5]:4.0f} | {r[6]:9.0f} |", flush=True)
            next_sample += args.every_s
        await asyncio.sleep(0.2)

    await mgr.stop()
    await engine.drain(10)
    await sink.aclose()
    await runner.cleanup()
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=300)
    p.add_argument("--streams", type=int, default=4)
    p.add_argument("--every-s", type=float, default=30)
    p.add_argument("--churn-s", type=float, default=10, help="remove/add + pause/resume period")
    args = p.parse_args()
    logging.basicConfig(level=logging.ERROR)  # a reconnect logs one warning: thousands here
    print(f"# soak_stream: {args.streams} http streams with reconnect churn, "
          f"{args.seconds:.0f} s, tiny model on CPU\n")
    print("| t (s) | RSS (MiB) | reconnects | windows | remove/add cycles | threads "
          "| Python objects |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        rows = asyncio.run(soak(args, Path(tmp)))
    if len(rows) >= 3:
        warm = rows[len(rows) // 3]
        last = rows[-1]
        print(f"\nRSS after warm-up (t={warm[0]:.0f} s): {warm[1]:.1f} MiB; at the end "
              f"(t={last[0]:.0f} s): {last[1]:.1f} MiB; change {last[1] - warm[1]:+.1f} MiB "
              f"over {last[2] - warm[2]:.0f} reconnects")
    return 0


if __name__ == "__main__":
    sys.exit(main())
