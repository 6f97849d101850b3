"""What reading frames costs the event loop: per frame (``recv``) or per sample (``recv_due``).

N clocked :class:`~bench.standin.SyntheticSource` s (25 fps, frames put into real
:class:`~monitor.media.sources.base.FrameBuffer` s by one
:class:`~bench.standin.DecoderClock`, as in ``bench_scale``) are read by N tasks, each
running a :class:`~monitor.media.sampler.LiveSampler` as a stream task does, through
``recv`` (one wake-up per frame) or ``recv_due`` (one per sample). Nothing else runs:
no engine, no sink. Per mode, over ``--seconds`` after ``--warmup``: frames and
samples per second, and the loop's thread CPU per sample, total and less the clock's
own ticks (the stand-in decoders' share, which real decode threads pay outside the
loop). Modes alternate ``--repeat`` times in one process; the load average is printed.

Example: ``python -m bench.bench_frames --streams 300 --seconds 10 --repeat 2``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from bench.standin import SyntheticSource, decoder_clock
from monitor.config import ServeSourceSettings
from monitor.media.sampler import LiveSampler


async def _reader(src: SyntheticSource, due: bool, counts: list[int]) -> None:
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


async def _row(streams: int, due: bool, seconds: float, warmup: float) -> dict[str, float]:
    settings = ServeSourceSettings()
    sources = []
    for i in range(streams):
        src = SyntheticSource(f"s{i}", 25.0, 16, phase=True, buffer_frames=settings.buffer_frames)
        sources.append(src.clocked(decoder_clock()))
    counts = [0, 0]
    tasks = [asyncio.create_task(_reader(s, due, counts)) for s in sources]
    await asyncio.sleep(warmup)
    clock = decoder_clock()
    f0, s0, c0, k0, t0 = counts[0], counts[1], time.thread_time(), clock.cpu_s, time.monotonic()
    await asyncio.sleep(seconds)
    f1, s1, c1, k1, t1 = counts[0], counts[1], time.thread_time(), clock.cpu_s, time.monotonic()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for s in sources:
        clock.remove(s)
    samples = s1 - s0
    return {
        "frames/s": (f1 - f0) / (t1 - t0),
        "samples/s": samples / (t1 - t0),
        "loop us/sample": 1e6 * (c1 - c0) / samples,
        "less clock us/sample": 1e6 * ((c1 - c0) - (k1 - k0)) / samples,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    print("| read | load avg | frames/s | samples/s | loop CPU us/sample | less the stand-in "
          "decoders us/sample |")
    print("|---|---|---|---|---|---|")
    for _ in range(args.repeat):
        for due in (False, True):
            la = os.getloadavg()[0]
            r = asyncio.run(_row(args.streams, due, args.seconds, args.warmup))
            print(f"| {'recv_due' if due else 'recv'} | {la:.1f}-{os.getloadavg()[0]:.1f} | "
                  f"{r['frames/s']:.0f} | {r['samples/s']:.0f} | {r['loop us/sample']:.1f} | "
                  f"{r['less clock us/sample']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
