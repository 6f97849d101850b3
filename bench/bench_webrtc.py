"""Benchmark: frames per second through the WebRTC path, and capture-to-score latency.

Runs `restrav serve` in this process (the real composition: aiortc receiver,
bounded track buffer, live sampler, engine, Redis sink) with a private
redis-server, and publishes a synthetic clip over WHIP from an aiortc peer at
each resolution and frame rate. For every scored window it takes the capture
time of the frame the window's last sample showed (when the publisher's track
produced it) and the time the score became readable in Redis (XREAD BLOCK).

Prints one table row per configuration:

* sent fps / received fps: frames the publisher's track produced and frames the
  service decoded per second (aiortc's VP8 at its default bitrate control);
* dropped: frames our bounded buffer discarded to stay real time;
* windows/s: scored windows per second from the first score on (one per 11.5 Hz
  sample when the service keeps up);
* capture->score p50/p95: latency in ms from frame capture to the score in Redis.
  It includes one frame interval at least (a sample is resolved when the next
  frame arrives), the encode/decode, the engine's micro-batch and the sink.

Usage::

    python bench/bench_webrtc.py                 # tiny random DINOv2 (hidden 32), CPU
    python bench/bench_webrtc.py --model ./dinov2-small --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import build_tiny_dinov2  # noqa: E402
from tests.media import pattern_frame  # noqa: E402
from tests.redisproc import RedisProcess, free_port  # noqa: E402
from tests.webrtc_peers import ClipTrack, Service, WhipPublisher, metric_value  # noqa: E402

TOKEN = "bench-token"


async def run_one(model: str, redis_url: str, size: tuple[int, int], fps: float,
                  seconds: float, stream: str) -> dict[str, Any]:
    import redis.asyncio as aioredis

    from monitor import keys
    from monitor.config import load_settings

    settings = load_settings(None, **{
        "model": {"ref": model, "device": "cpu", "batch_size": 8},
        "redis": {"url": redis_url},
        "serve": {"api": {"port": free_port(), "token": TOKEN}, "persist_streams": False,
                  "engine": {"max_batch": 8, "max_wait_ms": 5.0}},
        "webrtc": {"whip_any_stream": True, "idle_timeout_s": 5.0},
    })
    w, h = size
    frames = [pattern_frame(i, w, h, motion="jitter") for i in range(int(fps * 2))]
    captured: dict[int, float] = {}

    def on_sent(i: int, _mono: float) -> None:
        captured[i] = time.time()

    latencies: list[float] = []
    windows = 0
    first_at: float | None = None
    last_at = 0.0
    async with Service(settings) as svc:
        r = aioredis.from_url(redis_url, decode_responses=True)
        track = ClipTrack(frames, fps=fps, loop=True, on_sent=on_sent)
        pub = WhipPublisher(svc.url, stream, track, TOKEN)
        assert await pub.start() == 201
        t0 = time.monotonic()
        last_id = "0-0"
        try:
            while time.monotonic() - t0 < seconds:
                got = await r.xread({keys.stream_scores(stream): last_id}, block=500)
                now = time.time()
                for _, entries in got:
                    for entry_id, fields in entries:
                        last_id = entry_id
                        windows += 1
                        first_at = first_at if first_at is not None else time.monotonic()
                        last_at = time.monotonic()
                        # RTP time i/fps <-> frame i (the publisher's clock)
                        idx = int(float(fields["end_s"]) * fps + 1e-6)
                        if idx in captured:
                            latencies.append(now - captured[idx])
            elapsed = time.monotonic() - t0
            text = await svc.metrics_text()
        finally:
            await pub.stop()
            await r.aclose()
    received = metric_value(text, "restrav_webrtc_frames_received_total", stream=stream) or 0.0
    dropped = metric_value(text, "restrav_webrtc_frames_dropped_total", stream=stream,
                           reason="buffer_full") or 0.0
    lat = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {
        "size": f"{w}x{h}",
        "fps": fps,
        "sent_fps": track.sent / elapsed,
        "recv_fps": received / elapsed,
        "dropped": int(dropped),
        # steady state: from the first score on (the first window needs 2 s of video)
        "windows_s": (windows - 1) / (last_at - first_at) if first_at and windows > 1 else 0.0,
        "p50": float(np.percentile(lat, 50)),
        "p95": float(np.percentile(lat, 95)),
    }


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(build_tiny_dinov2(Path(tmp) / "tiny"))
        redis_server = RedisProcess(Path(tmp))
        redis_server.start()
        redis_url = redis_server.url
        try:
            rows = []
            configs = [((320, 240), 25.0), ((640, 480), 25.0), ((640, 480), 30.0),
                       ((1280, 720), 30.0)]
            for n, (size, fps) in enumerate(configs):
                rows.append(await run_one(model, redis_url, size, fps, args.seconds, f"b{n}"))
                print(f"  done {size[0]}x{size[1]} @ {fps:g}", file=sys.stderr)
        finally:
            redis_server.stop()
    name = args.model or "tiny random DINOv2 (hidden 32)"
    print(f"\nWebRTC path (aiortc WHIP publisher -> restrav serve -> Redis), "
          f"{args.seconds:g} s per row, model {name}")
    print("| size | target fps | sent fps | received fps | dropped | windows/s "
          "| capture->score p50 ms | p95 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} | {r['fps']:g} | {r['sent_fps']:.1f} | {r['recv_fps']:.1f} "
              f"| {r['dropped']} | {r['windows_s']:.1f} | {r['p50']:.0f} | {r['p95']:.0f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="DINOv2 reference (default: a tiny random one)")
    p.add_argument("--seconds", type=float, default=8.0, help="measurement time per row")
    args = p.parse_args()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
