"""The Redis sink's cost per score: client CPU (the event loop's share) and Redis CPU.

Writes ``--batches`` batches of ``--batch`` scores spread over ``--streams`` streams
(each batch holds consecutive scores of streams in turn, as the serve writer takes
them from its buffer) through :class:`monitor.live.sinks.RedisSink.write` against a
private redis-server, and prints per score: the process CPU time (packing, parsing,
building the fields: what the event loop pays), the wall time, and redis-server's
CPU (``INFO cpu`` delta). ``--trees A,B`` runs each tree's ``monitor`` in turn
(``--repeat`` times) for a before/after in one invocation; ``--fenced`` writes with
a lease held (the cluster path).

Example: ``python -m bench.bench_sink --trees /tmp/before,. --repeat 3``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


async def measure(args: argparse.Namespace) -> dict[str, float]:
    """One run in this process (``monitor`` from the tree on ``sys.path``)."""
    import numpy as np
    import redis.asyncio as aioredis
    from redis.utils import HIREDIS_AVAILABLE

    from monitor import keys
    from monitor.live.sinks import RedisSink
    from monitor.types import Score, StreamScore, WindowFeatures

    rc = aioredis.from_url(args.redis)
    await rc.flushall()
    owner = "bench" if args.fenced else ""
    if args.fenced:
        for i in range(args.streams):
            await rc.set(keys.stream_fence(f"s{i}"), 1)
            await rc.set(keys.stream_lease(f"s{i}"), keys.lease_value(owner, 1))
    rng = np.random.default_rng(0)
    seqs = [0] * args.streams

    def make(i: int) -> StreamScore:
        sid = i % args.streams
        seqs[sid] += 1
        wf = WindowFeatures(features=rng.random(21), repeated_frames=0)
        return StreamScore(f"s{sid}", seqs[sid], 0, seqs[sid] * 0.087, seqs[sid] * 0.087 + 2,
                           Score(window=wf, p_ai=float(rng.random()), threshold=0.5,
                                 repeated_samples=0),
                           arrival_s=time.monotonic(), scored_at=time.time(),
                           wall_start=time.time() - 2, wall_end=time.time(),
                           fence=1 if args.fenced else None)

    batches = [[make(b * args.batch + j) for j in range(args.batch)]
               for b in range(args.batches + 2)]
    sink = RedisSink.from_url(args.redis, owner=owner, scores_maxlen=1000)
    for b in batches[:2]:  # warm: connection, scripts
        await sink.write(b)  # type: ignore[arg-type]

    async def server_cpu() -> float:
        info = await rc.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    s0, c0, w0 = await server_cpu(), time.process_time(), time.perf_counter()
    for b in batches[2:]:
        await sink.write(b)  # type: ignore[arg-type]
    c1, w1, s1 = time.process_time(), time.perf_counter(), await server_cpu()
    await sink.aclose()
    await rc.aclose()
    n = args.batch * args.batches
    return {"client_us": 1e6 * (c1 - c0) / n, "wall_us": 1e6 * (w1 - w0) / n,
            "server_us": 1e6 * (s1 - s0) / n, "hiredis": float(HIREDIS_AVAILABLE)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=300)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--fenced", action="store_true")
    p.add_argument("--trees", default=str(ROOT))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--redis", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.redis is not None:  # a child: one measurement of the tree on sys.path
        print(json.dumps(asyncio.run(measure(args))))
        return 0
    sys.path.insert(0, str(ROOT))
    from bench.bench_overload import cpu_model
    from tests.redisproc import RedisProcess

    print(f"# bench_sink: {args.batch} scores per write over {args.streams} streams, "
          f"{args.batches} writes{', fenced' if args.fenced else ''}")
    print(f"CPU: {cpu_model()}\n")
    print("| tree | hiredis | load avg | client CPU us/score | wall us/score | "
          "redis-server CPU us/score |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        rs = RedisProcess(Path(tmp))
        rs.start()
        try:
            for _ in range(args.repeat):
                for tree in (Path(t).resolve() for t in args.trees.split(",")):
                    cmd = [sys.executable, str(ROOT / "bench" / "bench_sink.py"),
                           "--redis", rs.url, "--streams", str(args.streams),
                           "--batch", str(args.batch), "--batches", str(args.batches)]
                    if args.fenced:
                        cmd.append("--fenced")
                    load = os.getloadavg()[0]
                    env = {**os.environ, "PYTHONPATH": str(tree)}
                    out = subprocess.run(cmd, cwd=tree, env=env, capture_output=True,
                                         text=True, check=True)
                    r: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
                    print(f"| {tree.name} | {'yes' if r['hiredis'] else 'no'} | {load:.1f} | "
                          f"{r['client_us']:.1f} | {r['wall_us']:.1f} | "
                          f"{r['server_us']:.1f} |", flush=True)
        finally:
            rs.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
