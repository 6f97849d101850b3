"""Overload: does the service shed load and keep its goodput, or collapse? Prints tables.

The real :class:`~monitor.live.engine.Engine` (settings as ``serve`` builds it: batch and
queue derived, rotation on), the real :class:`~monitor.live.service.StreamManager` and
stream tasks (sampler, submit, score callbacks, alert hysteresis), fed by synthetic
live sources at 11.5 Hz, with a stand-in backbone of known cost
(:class:`~bench.standin.StandInEmbedder`, default ``2 ms + n x 1 ms`` per batch: a
capacity of about 1,000 samples/s, so that 4x overload is about 350 streams, which
these two cores can feed; ``--per-sample-ms 0.083`` is an H100 in bf16, whose capacity
the event loop of two cores cannot offer 4x of).

1. Capacity: the worker alone, fed from a thread as fast as it takes samples.
2. For each overload factor x: ``N = x * capacity / 11.5`` streams for ``--seconds``
   after a warm-up: offered and accepted samples/s, goodput (samples that end in a
   scored window: with hop 1, every sample of a run of >= 24 consecutive accepted
   samples), goodput / capacity, event-loop lag (a 10 ms ticker: p99, max), fairness
   (per-stream goodput: min / mean, Jain's index; the longest time a stream went without
   a score), streams yielding, windows skipped by the backstop.
3. Garbage-collector pauses (every generation, from ``gc.callbacks``) at 2x, before and
   after :func:`~monitor.live.engine.freeze_startup_heap`, in the same process.

Example: ``python -m bench.bench_overload`` (about 2.5 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from bench.standin import StandInEmbedder, StillFrame, register_synthetic_source  # noqa: E402
from monitor.config import EngineSettings, ServeSettings, StreamSpec  # noqa: E402
from monitor.live.alerts import AlertEvent  # noqa: E402
from monitor.live.batch import EngineSample  # noqa: E402
from monitor.live.engine import GIL_SWITCH_INTERVAL_S, Engine, freeze_startup_heap  # noqa: E402
from monitor.live.service import StreamManager  # noqa: E402
from monitor.metrics import StreamMetrics  # noqa: E402
from monitor.types import SAMPLE_HZ, SAMPLE_INTERVAL_S, WINDOW_SAMPLES, StreamScore  # noqa: E402


def cpu_model() -> str:
    """The CPU model and core count from lscpu (the machine the numbers came from)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()
    info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return (f"{info.get('Model name', '?').strip()}, {info.get('CPU(s)', '?').strip()} CPUs, "
            f"{info.get('Thread(s) per core', '?').strip()} thread(s) per core")


async def lag_ticker(lags: list[float], stop: asyncio.Event, period_s: float = 0.01) -> None:
    """Event-loop lag: how late each ``period_s`` sleep wakes (s), into ``lags``, until
    ``stop`` is set."""
    while not stop.is_set():
        t = time.monotonic()
        await asyncio.sleep(period_s)
        lags.append(time.monotonic() - t - period_s)


@dataclass
class _Run:
    """Per-stream goodput bookkeeping."""

    useful: int = 0
    last_end: float = -1.0
    last_at: float = 0.0
    longest_wait_s: float = 0.0


@dataclass
class CountingSink:
    """A sink that counts goodput per stream (no buffer: O(1) per score).

    Goodput is counted by the frames' arrival times: a sample that arrived in
    ``[t0, t1]`` and ends in a scored window counts, also when that window is scored
    after ``t1`` (keep the run going a window's time after ``t1``), so that runs cut
    by the edges of the period are neither lost nor counted twice.
    """

    t0: float = math.inf
    t1: float = math.inf
    streams: dict[str, _Run] = field(default_factory=dict)

    def publish(self, score: StreamScore) -> None:
        r = self.streams.setdefault(score.stream_id, _Run())
        # consecutive windows of one run end one sample apart; a window that starts a run
        # makes all its 24 samples useful, a later one only its last
        new_run = abs(score.end_s - r.last_end - SAMPLE_INTERVAL_S) > SAMPLE_INTERVAL_S / 4
        r.last_end = score.end_s
        first = WINDOW_SAMPLES - 1 if new_run else 0
        r.useful += sum(1 for j in range(first + 1)
                        if self.t0 <= score.arrival_s - j * SAMPLE_INTERVAL_S <= self.t1)
        now = time.monotonic()
        if self.t0 <= now <= self.t1:
            r.longest_wait_s = max(r.longest_wait_s, now - max(r.last_at, self.t0))
            r.last_at = now

    def publish_many(self, scores: Sequence[StreamScore]) -> None:
        for sc in scores:
            self.publish(sc)

    def publish_event(self, event: AlertEvent) -> None:
        pass

    async def start(self) -> None:
        pass

    async def flush(self, timeout_s: float) -> bool:
        return True

    async def aclose(self) -> None:
        pass

    def useful(self) -> dict[str, int]:
        """Samples that arrived in the period and ended in a scored window, per stream."""
        return {k: r.useful for k, r in self.streams.items()}

    def waits(self, end: float) -> dict[str, float]:
        """The longest time each stream went without a score in the measured period."""
        return {k: max(r.longest_wait_s, end - max(r.last_at, self.t0))
                for k, r in self.streams.items()}


class GcPauses:
    """Durations of every collection, from gc.callbacks."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self._t = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t = time.perf_counter()
        else:
            self.pauses.append((int(info["generation"]), time.perf_counter() - self._t))

    def summary(self) -> str:
        ms = sorted(p * 1000 for _, p in self.pauses)
        if not ms:
            return "none"
        gen2 = sum(1 for g, _ in self.pauses if g == 2)
        p99 = ms[min(len(ms) - 1, math.ceil(0.99 * len(ms)) - 1)]
        return f"{len(ms)} ({gen2} full) | {p99:.1f} | {ms[-1]:.1f}"


def full_collection_ms() -> float:
    """The longest of three full collections, in ms."""
    out = []
    for _ in range(3):
        t = time.perf_counter()
        gc.collect()
        out.append((time.perf_counter() - t) * 1000)
    return max(out)


def measure_capacity(per_batch: Callable[[], StandInEmbedder], seconds: float) -> float:
    """Samples/s the worker sustains alone (fed from a thread, no event loop)."""
    settings = EngineSettings(shedding="skip", max_backlog_per_stream=10_000,
                              queue_samples=100_000, convert_threads=1)
    engine = Engine(per_batch(), None, settings, StreamMetrics(CollectorRegistry()))
    streams = [f"c{i}" for i in range(64)]
    for sid in streams:
        engine.register(sid, lambda sc: None)
    engine.start()
    frame = StillFrame(16)
    stop = threading.Event()

    def feed() -> None:
        k = 0
        while not stop.is_set():
            for sid in streams:
                engine.submit(EngineSample(sid, 0, k, k * SAMPLE_INTERVAL_S, frame, 0.0))
            k += 1
            if engine.backlog(streams[0]) > 200:
                time.sleep(0.002)

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    time.sleep(1.0)  # the batch limit settles
    n0, t0 = engine.samples_embedded, time.monotonic()
    time.sleep(seconds)
    rate = (engine.samples_embedded - n0) / (time.monotonic() - t0)
    stop.set()
    t.join()
    engine.stop(10)
    return rate


async def run_load(
    embedder: StandInEmbedder, n_streams: int, warmup_s: float, seconds: float,
    engine_settings: EngineSettings, gc_pauses: GcPauses | None = None,
) -> dict[str, Any]:
    """N synthetic streams through the real manager and engine; the measured figures."""
    registry = CollectorRegistry()
    metrics = StreamMetrics(registry)
    settings = ServeSettings(engine=engine_settings, persist_streams=False)
    engine = Engine(embedder, None, settings.engine, metrics)
    engine.start(asyncio.get_running_loop())
    sink = CountingSink()
    manager = StreamManager(engine, sink, settings, metrics)
    for i in range(n_streams):
        # as when these figures were taken: each source sleeps until its frames' times
        url = f"synth://s{i}?fps={SAMPLE_HZ}&size=16&delivery=sleep&phase=0"
        await manager.add(StreamSpec(id=f"s{i}", url=url),
                          persist=False)
    lags: list[float] = []
    stop = asyncio.Event()
    tick = asyncio.create_task(lag_ticker(lags, stop))
    await asyncio.sleep(warmup_s)
    statuses = manager.list()
    sampled0 = sum(s.samples for s in statuses)
    embedded0 = engine.samples_embedded
    stages0 = _stage_seconds(registry)
    dropped0 = sum(s.frames_dropped for s in statuses)
    backstop0 = _backstop(registry)
    lags.clear()
    if gc_pauses is not None:
        gc_pauses.pauses.clear()
        gc.callbacks.append(gc_pauses)
    sink.t0 = time.monotonic()
    yielding: list[int] = []
    t_end = sink.t0 + seconds
    while time.monotonic() < t_end:
        await asyncio.sleep(0.5)
        yielding.append(engine.shedder.yielding)
    sink.t1 = time.monotonic()
    elapsed = sink.t1 - sink.t0
    if gc_pauses is not None:
        gc.callbacks.remove(gc_pauses)
    statuses = manager.list()
    sampled = sum(s.samples for s in statuses) - sampled0
    dropped = sum(s.frames_dropped for s in statuses) - dropped0
    backstop = _backstop(registry) - backstop0
    embedded = engine.samples_embedded - embedded0
    stages = {k: v - stages0.get(k, 0.0) for k, v in _stage_seconds(registry).items()}
    slots = engine.shedder.slots if engine.shedder.yielding else n_streams
    stop.set()
    await tick
    # windows still filling at t1 end a window's time later (their samples arrived in time)
    await asyncio.sleep(2 * WINDOW_SAMPLES * SAMPLE_INTERVAL_S)
    batch, queue, cap = engine.batch_limit, engine.queue_limit, engine.capacity_sps
    await manager.stop()
    await engine.drain(30)
    useful = sink.useful()
    per = [useful.get(f"s{i}", 0) / elapsed for i in range(n_streams)]
    mean = statistics.mean(per)
    jain = sum(per) ** 2 / (len(per) * sum(x * x for x in per)) if any(per) else 0.0
    lag_ms = sorted(x * 1000 for x in lags) or [float("nan")]
    waits = list(sink.waits(sink.t0 + elapsed).values())
    # a stream never scored in the period waited all of it
    waits += [elapsed] * (n_streams - len(sink.streams))
    return {
        "streams": n_streams, "offered_sps": sampled / elapsed,
        "accepted_sps": (sampled - dropped) / elapsed, "goodput_sps": sum(per),
        "lag_p99_ms": lag_ms[min(len(lag_ms) - 1, int(0.99 * len(lag_ms)))],
        "lag_max_ms": lag_ms[-1], "fair_min": min(per) / mean if mean else 0.0, "jain": jain,
        "longest_wait_s": max(waits), "yielding": statistics.mean(yielding) if yielding else 0,
        "backstop_windows": backstop, "batch": batch, "queue": queue, "engine_cap": cap,
        "embedded_sps": embedded / elapsed, "slots": slots,
        "worker_busy": {k: v / elapsed for k, v in stages.items() if k != "queue"},
    }


def rotation_s(r: dict[str, Any]) -> float:
    """The longest a stream should go without a score when S of N streams run and each
    runs two windows' worth (48 samples) per turn: its wait in the queue, (N - S) / S
    turns, then a window's 24 samples before its first score."""
    n, slots = r["streams"], r["slots"]
    if slots >= n:
        return 2 * WINDOW_SAMPLES / SAMPLE_HZ
    return ((n - slots) / slots * 2 * WINDOW_SAMPLES + WINDOW_SAMPLES) / SAMPLE_HZ


def _stage_seconds(registry: CollectorRegistry) -> dict[str, float]:
    """Seconds the worker spent per stage so far (the stage histograms' sums)."""
    out: dict[str, float] = {}
    for metric in registry.collect():
        if metric.name == "restrav_stage_latency_seconds":
            for smp in metric.samples:
                if smp.name.endswith("_sum"):
                    out[smp.labels["stage"]] = smp.value
    return out


def _backstop(registry: CollectorRegistry) -> float:
    """Windows skipped by the backstop (reason overload), all streams (outside the
    measured loop: this scans the registry)."""
    total = 0.0
    for metric in registry.collect():
        if metric.name == "restrav_stream_windows_skipped":
            total += sum(s.value for s in metric.samples
                         if s.name.endswith("_total") and s.labels.get("reason") == "overload")
    return total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fixed-ms", type=float, default=2.0, help="stand-in cost per batch")
    p.add_argument("--per-sample-ms", type=float, default=1.0, help="stand-in cost per sample")
    p.add_argument("--loads", default="1.2,2,4", help="overload factors")
    p.add_argument("--seconds", type=float, default=20.0, help="measured time per load")
    p.add_argument("--warmup", type=float, default=6.0, help="warm-up per load")
    p.add_argument("--gc-seconds", type=float, default=12.0, help="each GC phase at 2x")
    p.add_argument("--target-utilisation", type=float, default=None,
                   help="serve.engine.target_utilisation (default: the setting's default)")
    p.add_argument("--skip-policy", action="store_true",
                   help="also run 2x with the old policy (skip; batch 16, queue 256)")
    p.add_argument("--switch-interval-ms", type=float, default=GIL_SWITCH_INTERVAL_S * 1000,
                   help="sys.setswitchinterval, as serve sets it (Python's default: 5)")
    args = p.parse_args()
    sys.setswitchinterval(args.switch_interval_ms / 1000)
    torch.set_num_threads(1)
    register_synthetic_source()
    # the heap `serve` has: torch and transformers loaded (about 300 k tracked objects)
    import transformers.models.dinov2.modeling_dinov2  # noqa: F401

    tuned = ({} if args.target_utilisation is None
             else {"target_utilisation": args.target_utilisation})

    def standin() -> StandInEmbedder:
        return StandInEmbedder(args.fixed_ms / 1000, args.per_sample_ms / 1000)

    print("# bench_overload: shedding under overload (real Engine, StreamManager, stream tasks)")
    print(f"CPU: {cpu_model()}; Python {platform.python_version()}, torch {torch.__version__}")
    print(f"interpreter switch interval {args.switch_interval_ms:g} ms; "
          f"stand-in backbone: {args.fixed_ms:g} ms + n x {args.per_sample_ms:g} ms per batch; "
          f"streams at {SAMPLE_HZ:.1f} Hz, hop 1; {args.warmup:g} s warm-up, "
          f"{args.seconds:g} s measured per row\n")
    cap = measure_capacity(standin, 3.0)
    print(f"capacity (worker alone, fed from a thread): {cap:.0f} samples/s\n")

    # GC pauses before and after freezing the start-up heap, same load, same process
    n2 = max(1, round(2 * cap / SAMPLE_HZ))
    before, after = GcPauses(), GcPauses()
    tracked0 = len(gc.get_objects())
    r_before = asyncio.run(run_load(standin(), n2, 3.0, args.gc_seconds, EngineSettings(),
                                    before))
    full_before = full_collection_ms()
    frozen = freeze_startup_heap()
    full_after = full_collection_ms()
    r_after = asyncio.run(run_load(standin(), n2, 3.0, args.gc_seconds, EngineSettings(),
                                   after))
    print(f"## Garbage-collector pauses at 2x ({n2} streams, {args.gc_seconds:g} s each; "
          f"{tracked0:,} tracked objects before, {frozen:,} frozen)\n")
    print("| heap | collections | p99 ms | max ms | event-loop lag p99 / max ms |")
    print("|---|---|---|---|---|")
    print(f"| not frozen | {before.summary()} | {r_before['lag_p99_ms']:.1f} / "
          f"{r_before['lag_max_ms']:.1f} |")
    print(f"| gc.freeze() after start-up | {after.summary()} | {r_after['lag_p99_ms']:.1f} / "
          f"{r_after['lag_max_ms']:.1f} |\n")
    print(f"A full collection (gc.collect(), the cost of a generation-2 pause) on this heap: "
          f"{full_before:.1f} ms before, {full_after:.1f} ms after gc.freeze() (max of 3).\n")

    rows = []
    for x in (float(v) for v in args.loads.split(",")):
        n = max(1, round(x * cap / SAMPLE_HZ))
        rows.append((f"{x:g}x", "rotate, derived",
                     asyncio.run(run_load(standin(), n, args.warmup, args.seconds,
                                          EngineSettings(**tuned)))))
    if args.skip_policy:
        n = max(1, round(2 * cap / SAMPLE_HZ))
        old = EngineSettings(shedding="skip", max_batch=16, queue_samples=256)
        rows.append(("2x", "skip, 16 / 256 (before)",
                     asyncio.run(run_load(standin(), n, args.warmup, args.seconds, old))))
    print("## Overload (heap frozen)\n")
    print("| load | policy, sizes | streams | offered /s | accepted /s | goodput /s | "
          "goodput / capacity | embedded /s | goodput / embedded | engine's estimate, slots | "
          "loop lag p99 / max ms | fairness min/mean, Jain | longest without a score s "
          "(a full rotation) | yielding (mean) | backstop skips | batch / queue |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for load, policy, r in rows:
        print(f"| {load} | {policy} | {r['streams']} | {r['offered_sps']:.0f} | "
              f"{r['accepted_sps']:.0f} | {r['goodput_sps']:.0f} | "
              f"{100 * r['goodput_sps'] / cap:.0f} % | {r['embedded_sps']:.0f} | "
              f"{100 * r['goodput_sps'] / r['embedded_sps']:.0f} % | "
              f"{r['engine_cap'] or 0:.0f}, {r['slots']} | {r['lag_p99_ms']:.1f} / "
              f"{r['lag_max_ms']:.0f} | {r['fair_min']:.2f}, {r['jain']:.3f} | "
              f"{r['longest_wait_s']:.1f} ({rotation_s(r):.1f}) | {r['yielding']:.0f} | "
              f"{r['backstop_windows']:.0f} | "
              f"{r['batch']} / {r['queue']} |")
    print("\nWorker time per second of the run, by stage (the profile: is the single worker "
          "the wall, and is it the device or the host work?)\n")
    print("| load | " + " | ".join(STAGES) + " | busy |")
    print("|---|" + "---|" * (len(STAGES) + 1))
    for load, _, r in rows:
        busy = r["worker_busy"]
        print(f"| {load} | " + " | ".join(f"{busy.get(k, 0.0):.2f}" for k in STAGES)
              + f" | {sum(busy.values()):.2f} |")
    return 0


STAGES = ("convert", "embed", "geometry", "classify")


if __name__ == "__main__":
    sys.exit(main())
