"""What reading frames costs the event loop: per frame (``recv``) or per sample (``recv_due``).

N sources of 25 fps frames in real :class:`~monitor.media.sources.base.FrameBuffer` s
are read by N tasks, each running a :class:`~monitor.media.sampler.LiveSampler` as a
stream task does, through ``recv`` (one wake-up per frame) or ``recv_due`` (one per
sample). Nothing else runs: no engine, no sink. The frames come either from
``bench_scale``'s clocked :class:`~bench.standin.SyntheticSource` s (one
:class:`~bench.standin.DecoderClock` on the loop, every 5 ms: ``--producers 0``) or,
as decode threads hand them over, from ``--producers`` threads, each putting its
sources' frames at their own times (random phases), so that a frame may wake the loop
from its sleep. Per mode, over ``--seconds`` after ``--warmup``: frames and samples per
second, and the loop's thread CPU per sample (with the clock: less its ticks, which
real decode threads pay outside the loop). Modes alternate ``--repeat`` times in one
process; the load average is printed. ``--wake-probe`` first measures what one wake-up
of an idle loop costs on the machine (a timer and nothing else).

Example: ``python -m bench.bench_frames --streams 300 --seconds 10 --repeat 2
[--producers 8]``.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import os
import random
import threading
import time
from typing import Any

import numpy as np

from bench.standin import SyntheticSource, decoder_clock
from monitor.config import ServeSourceSettings
from monitor.media.sampler import LiveSampler
from monitor.media.sources.base import FrameBuffer, LoopWaker, SourceFrame


async def _reader(src: Any, due: bool, counts: list[int]) -> None:
    sampler: LiveSampler[object] = LiveSampler(0.5)
    while True:
        if due:
            frames = await src.recv_due(sampler.next_time_s)
        else:
            frames = [await src.recv()]
        counts[0] += len(frames)
        for f in frames:
            reason, samples = sampler.push(f, f.pts_s)
            if reason is not None:
                sampler.gap()
            counts[1] += len(samples)


class _Threaded:
    """A reader's view of one FrameBuffer that a producer thread fills."""

    def __init__(self, buf: FrameBuffer) -> None:
        self.buffer = buf
        self.recv = buf.get
        self.recv_due = buf.get_due


def _produce(bufs: list[FrameBuffer], fps: float, quit_: threading.Event) -> None:
    """Put each buffer's frames at their times (25 fps, a random phase per buffer)."""
    rng = random.Random(len(bufs))
    t0 = time.monotonic()
    due = [(t0 + rng.random() / fps, k, 0) for k in range(len(bufs))]
    heapq.heapify(due)
    image = np.zeros((16, 16, 3), np.uint8)
    while not quit_.is_set():
        t, k, i = due[0]
        wait = t - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        heapq.heapreplace(due, (t + 1 / fps, k, i + 1))
        bufs[k].put(SourceFrame(pts_s=i / fps, arrival_s=time.monotonic(), index=i,
                                image=image, to_rgb=lambda im: im))


async def _row(streams: int, due: bool, seconds: float, warmup: float,
               producers: int) -> dict[str, float]:
    settings = ServeSourceSettings()
    loop = asyncio.get_running_loop()
    clock = decoder_clock()
    quit_ = threading.Event()
    threads = []
    sources: list[Any] = []
    if producers:
        waker = LoopWaker(loop)
        bufs = [FrameBuffer(loop, settings.buffer_frames, waker=waker) for _ in range(streams)]
        sources = [_Threaded(b) for b in bufs]
        threads = [threading.Thread(target=_produce, args=(bufs[p::producers], 25.0, quit_),
                                    daemon=True) for p in range(producers)]
        for th in threads:
            th.start()
    else:
        for i in range(streams):
            src = SyntheticSource(f"s{i}", 25.0, 16, phase=True,
                                  buffer_frames=settings.buffer_frames)
            sources.append(src.clocked(clock))
    counts = [0, 0]
    tasks = [asyncio.create_task(_reader(s, due, counts)) for s in sources]
    await asyncio.sleep(warmup)
    f0, s0, c0, k0, t0 = counts[0], counts[1], time.thread_time(), clock.cpu_s, time.monotonic()
    await asyncio.sleep(seconds)
    f1, s1, c1, k1, t1 = counts[0], counts[1], time.thread_time(), clock.cpu_s, time.monotonic()
    quit_.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for s in sources:
        if isinstance(s, SyntheticSource):
            clock.remove(s)
    for th in threads:
        th.join()
    samples = s1 - s0
    return {
        "frames/s": (f1 - f0) / (t1 - t0),
        "samples/s": samples / (t1 - t0),
        "loop us/sample": 1e6 * (c1 - c0) / samples,
        "less clock us/sample": 1e6 * ((c1 - c0) - (k1 - k0)) / samples,
    }


async def _wake(period_s: float, seconds: float) -> tuple[float, float]:
    """A bare loop woken by one timer every ``period_s``: (wake-ups/s, CPU us each)."""
    loop = asyncio.get_running_loop()
    n = [0]

    def tick() -> None:
        n[0] += 1
        loop.call_later(period_s, tick)

    loop.call_later(period_s, tick)
    c0, t0 = time.thread_time(), time.monotonic()
    await asyncio.sleep(seconds)
    c1, t1 = time.thread_time(), time.monotonic()
    return n[0] / (t1 - t0), 1e6 * (c1 - c0) / max(1, n[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--producers", type=int, default=0,
                    help="decode threads putting the frames (0: the stand-in's clock)")
    ap.add_argument("--wake-probe", action="store_true",
                    help="first, what one wake-up of an idle loop costs (a timer every "
                    "10, 5, 1 ms)")
    args = ap.parse_args()
    if args.wake_probe:
        for period in (0.01, 0.005, 0.001):
            rate, us = asyncio.run(_wake(period, 3.0))
            print(f"wake-up probe: a timer every {period * 1e3:g} ms: {rate:.0f} wake-ups/s, "
                  f"{us:.1f} us of loop CPU each (load {os.getloadavg()[0]:.1f})")
    print("| read | load avg | frames/s | samples/s | loop CPU us/sample | less the stand-in "
          "decoders us/sample |")
    print("|---|---|---|---|---|---|")
    for _ in range(args.repeat):
        for due in (False, True):
            la = os.getloadavg()[0]
            r = asyncio.run(_row(args.streams, due, args.seconds, args.warmup,
                                 args.producers))
            print(f"| {'recv_due' if due else 'recv'} | {la:.1f}-{os.getloadavg()[0]:.1f} | "
                  f"{r['frames/s']:.0f} | {r['samples/s']:.0f} | {r['loop us/sample']:.1f} | "
                  f"{r['less clock us/sample']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
