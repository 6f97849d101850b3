"""Benchmark the operator page's feed; prints a markdown table (record it in BENCHMARKS.md).

What one tick costs the service's event loop: S streams each scoring a window
per tick, C event-stream subscribers. A tick polls S statuses, folds the
scores into points, serialises one update and offers it to every subscriber
(the bytes are shared, not copied per client). Also the size and cost of the
snapshot a connecting page receives after a full history (``history_s`` of
ticks). Subscribers here are in-process queues emptied after each tick: the
socket writes (aiohttp, the kernel) are not in these figures.

Example:
  python -m bench.bench_livefeed --streams 1,50,200 --clients 1,50
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Any

import numpy as np

from monitor.config import UiSettings
from monitor.live.fanout import Subscriber
from monitor.live.livefeed import THETA_MEAN, LiveFeed
from monitor.types import N_FEATURES, Score, StreamScore, WindowFeatures


def _score(stream: str, seq: int, at: float, rng: np.random.Generator) -> StreamScore:
    f = rng.normal(1.0, 0.2, N_FEATURES)
    f[THETA_MEAN] = 100 + 20 * rng.random()
    wf = WindowFeatures(features=f, repeated_frames=int(rng.random() < 0.05))
    return StreamScore(stream, seq, 0, seq * 0.1, seq * 0.1 + 2, Score(wf, float(rng.random())),
                       0.0, at, at - 2, at)


def _status(sid: str, k: int) -> dict[str, Any]:
    return {"id": sid, "kind": "rtsp", "url": "rtsp://cam/x", "state": "running",
            "paused": False, "error": None, "reconnects": 0, "windows_scored": k,
            "alert_active": False, "gaps": {}, "history": [{"state": "running", "at": 1.0}]}


def run(streams: int, clients: int, ticks: int, history_s: float) -> dict[str, float]:
    """One configuration: per-tick cost, update size, snapshot size and cost."""
    clock = [1_800_000_000.0]
    ids = [f"cam{i:04d}" for i in range(streams)]
    k = [0]
    feed = LiveFeed(UiSettings(tick_s=1.0, history_s=history_s, max_clients=max(clients, 1)),
                    statuses=lambda: [_status(i, k[0]) for i in ids], clock=lambda: clock[0])
    subs: list[Subscriber] = []
    for _ in range(clients):
        sub = feed.subscribe()
        assert isinstance(sub, Subscriber)
        subs.append(sub)
    rng = np.random.default_rng(0)
    # fill the history first (not timed), then time the steady-state ticks
    for _ in range(int(history_s)):
        for sid in ids:
            feed.publish(_score(sid, k[0], clock[0], rng))
        feed.tick()
        for sub in subs:
            sub._queue.clear()
        k[0] += 1
        clock[0] += 1.0
    tick_ms: list[float] = []
    sizes: list[int] = []
    for _ in range(ticks):
        for sid in ids:
            feed.publish(_score(sid, k[0], clock[0], rng))
        t0 = time.perf_counter()
        feed.tick()
        tick_ms.append((time.perf_counter() - t0) * 1000)
        if subs:
            sizes.append(len(subs[0]._queue[-1]))
        for sub in subs:
            sub._queue.clear()
        k[0] += 1
        clock[0] += 1.0
    t0 = time.perf_counter()
    snap = feed.snapshot_message()
    snap_ms = (time.perf_counter() - t0) * 1000
    return {
        "tick_p50_ms": statistics.median(tick_ms),
        "tick_max_ms": max(tick_ms),
        "update_kb": (statistics.mean(sizes) / 1024) if sizes else 0.0,
        "snapshot_kb": len(snap) / 1024,
        "snapshot_ms": snap_ms,
        "dropped": float(feed.dropped),
    }


def main() -> None:
    """Parse the options, run every configuration, print the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", default="1,50,200", help="comma-separated stream counts")
    p.add_argument("--clients", default="1,50", help="comma-separated subscriber counts")
    p.add_argument("--ticks", type=int, default=30, help="timed ticks per configuration")
    p.add_argument("--history-s", type=float, default=300.0, help="serve.ui.history_s")
    a = p.parse_args()
    print(f"machine: {platform.machine()}, python {platform.python_version()}, "
          f"history {a.history_s:.0f} s at one tick a second\n")
    print("| streams | clients | tick p50 ms | tick max ms | update kB | snapshot kB "
          "| snapshot ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for s in (int(x) for x in a.streams.split(",")):
        for c in (int(x) for x in a.clients.split(",")):
            r = run(s, c, a.ticks, a.history_s)
            assert r["dropped"] == 0
            print(f"| {s} | {c} | {r['tick_p50_ms']:.2f} | {r['tick_max_ms']:.2f} "
                  f"| {r['update_kb']:.1f} | {r['snapshot_kb']:.0f} | {r['snapshot_ms']:.0f} |")


if __name__ == "__main__":
    main()
