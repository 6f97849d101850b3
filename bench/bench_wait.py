"""The cost of waiting for a replica (``redis.wait_replicas``) per durable write.

    python bench/bench_wait.py [--n 2000] [--cluster]

Starts a real primary and one replica (redis-server, loopback, no persistence), or
with ``--cluster`` a Redis Cluster of three primaries with one replica each
(``tests/clusterproc.py``), and times, with and without ``WAIT 1``, the writes that
wait: ``enqueue`` (XADD of a job), a job's answer (the fenced answer script, through
``Answers.publish``; on a cluster the script, then each note with WAIT on its node),
a lease grant (``LeaseStore.acquire``, asyncio), and batches of serve's fenced scores
(``RedisSink.write``: one pipeline of one script call per stream, WAIT on the same
connection; on a cluster one such pipeline per node, concurrently): 1 score, 8 scores
of one stream, and 6 streams of 1 score each (on a cluster, on all three nodes).
Prints the CPU (lscpu), the load average, and one table row per write: mean and p99
latency in microseconds, without and with WAIT.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prometheus_client import CollectorRegistry  # noqa: E402

from monitor.cluster.leases import LeaseStore  # noqa: E402
from monitor.config import QueueSettings  # noqa: E402
from monitor.live.sinks.redis import RedisSink  # noqa: E402
from monitor.metrics import QueueMetrics  # noqa: E402
from monitor.queue import Job, connect, enqueue, ensure_group  # noqa: E402
from monitor.queue.answers import Answers  # noqa: E402
from monitor.queue.context import WorkerContext  # noqa: E402
from monitor.queue.jobs import Entry  # noqa: E402
from monitor.redis_conn import Durability, async_redis_client  # noqa: E402
from tests.clusterproc import ClusterSetup  # noqa: E402
from tests.sentinelproc import SentinelSetup  # noqa: E402
from tests.test_sinks import score  # noqa: E402

WAIT = Durability(1, 1000)


def cpu() -> str:
    """lscpu's model name and the vector flags it lists."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.machine()
    info = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in out.splitlines())}
    flags = [f for f in info.get("Flags", "").split() if f.startswith(("avx", "sse4", "amx"))]
    return f"{info.get('Model name', '?')}, {info.get('CPU(s)', '?')} CPUs, flags {' '.join(flags)}"


def stats_us(samples: list[float]) -> tuple[float, float]:
    """Mean and p99 of ``samples`` (seconds) in microseconds."""
    ordered = sorted(samples)
    return (sum(ordered) / len(ordered) * 1e6,
            ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e6)


def timed(n: int, fn: Callable[[int], None]) -> list[float]:
    """``fn(i)`` for i in range(n), each timed."""
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t0)
    return out


def bench_enqueue(url: str, n: int, durability: Durability) -> list[float]:
    client = connect(url)
    q = QueueSettings(max_queue_length=10**9)
    try:
        return timed(n, lambda i: enqueue(client, Job(job_id=f"e{i}", source="/x.mp4"), q,
                                          durability))
    finally:
        client.close()


def bench_answer(url: str, n: int, durability: Durability, tag: str) -> list[float]:
    client = connect(url)
    ensure_group(client, "workers")
    ctx = WorkerContext(client, QueueSettings(), QueueMetrics(CollectorRegistry()), "bench",
                        durability=durability)
    answers = Answers(ctx)
    result = {"job_id": "", "ok": True, "status": "scored", "error": None,
              "aggregate": {"score_mean": 0.5}, "clip": {"windows": [0.5] * 40}}
    try:
        def one(i: int) -> None:
            entry = Entry(id=f"1-{i}", fields={}, deliveries=1, job_id=f"a{tag}{i}")
            answers.publish(entry, {**result, "job_id": f"a{tag}{i}"}, None)
        return timed(n, one)
    finally:
        client.close()


async def bench_async(url: str, n: int, durability: Durability, tag: str
                      ) -> tuple[list[float], list[float], list[float], list[float]]:
    """Lease grants, then score batches of 1 and of 8 through the sink; then batches of 6
    streams with one score each."""
    client = async_redis_client(url, socket_connect_timeout=2, socket_timeout=2)
    store = LeaseStore(client, "bench", 60.0, durability)
    sink = RedisSink(client, owner="bench", durability=durability)
    leases: list[float] = []
    ones: list[float] = []
    eights: list[float] = []
    sixes: list[float] = []
    try:
        many = {f"m{tag}{k}": await store.acquire(f"m{tag}{k}") for k in range(6)}
        for i in range(n):
            batch6 = [dataclasses.replace(score(sid, i), fence=tok) for sid, tok in many.items()]
            t0 = time.perf_counter()
            await sink.write(batch6)
            sixes.append(time.perf_counter() - t0)
        for i in range(n):
            sid = f"s{tag}{i}"
            t0 = time.perf_counter()
            token = await store.acquire(sid)
            leases.append(time.perf_counter() - t0)
            assert token is not None
            batch = [dataclasses.replace(score(sid, k), fence=token) for k in range(9)]
            t0 = time.perf_counter()
            await sink.write(batch[:1])
            ones.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            await sink.write(batch[1:])
            eights.append(time.perf_counter() - t0)
        assert sink.refused == 0
    finally:
        await client.aclose()
    return leases, ones, eights, sixes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--cluster", action="store_true",
                    help="a Redis Cluster (3 primaries, 1 replica each) instead of one pair")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        setup: SentinelSetup | ClusterSetup
        if args.cluster:
            setup = ClusterSetup(Path(d))
            setup.start()
            url = setup.url()
        else:
            setup = SentinelSetup(Path(d), replicas=1, sentinels=0)
            setup.start()
            url = f"redis://127.0.0.1:{setup.node_ports[0]}/0"
        try:
            rows: dict[str, list[tuple[float, float]]] = {}
            for label, dur in (("off", Durability()), ("wait", WAIT)):  # warm up, not kept
                warm = max(20, args.n // 10)
                bench_enqueue(url, warm, dur)
                bench_answer(url, warm, dur, f"w{label}")
                asyncio.run(bench_async(url, warm, dur, f"w{label}"))
            for label, dur in (("off", Durability()), ("wait", WAIT)):
                rows.setdefault("enqueue (XADD)", []).append(
                    stats_us(bench_enqueue(url, args.n, dur)))
                rows.setdefault("answer (script)", []).append(
                    stats_us(bench_answer(url, args.n, dur, label)))
                leases, ones, eights, sixes = asyncio.run(bench_async(url, args.n, dur, label))
                rows.setdefault("lease grant (script)", []).append(stats_us(leases))
                rows.setdefault("score batch of 1 (sink)", []).append(stats_us(ones))
                rows.setdefault("score batch of 8, one stream (sink)", []).append(
                    stats_us(eights))
                rows.setdefault("score batch of 6 streams x 1 (sink)", []).append(
                    stats_us(sixes))
        finally:
            setup.stop()
    where = ("Redis Cluster, 3 primaries + 3 replicas" if args.cluster
             else "primary + 1 replica")
    print(f"{cpu()}; Python {platform.python_version()}; n={args.n} each, {where} on "
          f"loopback; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end")
    print("| write | without WAIT mean / p99 (us) | WAIT 1 mean / p99 (us) |")
    print("|---|---|---|")
    for name, ((m0, p0), (m1, p1)) in rows.items():
        print(f"| {name} | {m0:.0f} / {p0:.0f} | {m1:.0f} / {p1:.0f} |")


if __name__ == "__main__":
    main()
