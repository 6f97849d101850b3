"""Failover and rebalancing time of `restrav serve` replicas sharing live streams.

    python bench/bench_failover.py [--kills 20] [--replicas 3] [--streams 6]
                                   [--ttl 2] [--renew 0.5]

Starts a private redis-server and N real ``restrav serve`` replicas (tiny random
model, leases in Redis), adds looping file streams through the control API and
waits for an even split. Then, ``--kills`` times: SIGKILL the replica owning the
most streams and measure, for each of its streams, the time from the kill to
the first score written by another replica (the entry's ``scored_at``, so the
polling interval does not count). A fresh replica is started in the killed
one's place and the rebalancing time is measured from its first heartbeat in
Redis to loads within one stream of even.

Failover time is bounded below by the lease TTL (the dead owner's lease must
expire), plus up to one renew interval (the next assignment tick), the stream's
start and a full 2 s window of samples before the first score.
"""

from __future__ import annotations

import argparse
import platform
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.cluster_procs import Cluster, stream_clip, wait_for  # noqa: E402
from tests.conftest import build_tiny_dinov2  # noqa: E402
from tests.redisproc import RedisProcess  # noqa: E402


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation."""
    s = sorted(values)
    if len(s) == 1:
        return s[0]
    i = q * (len(s) - 1)
    lo = int(i)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (i - lo)


def even(loads: dict[str, int], total: int) -> bool:
    return sum(loads.values()) == total and max(loads.values()) - min(loads.values()) <= 1


def wait_back(
    c: Cluster, moved: list[str], fence: dict[str, int], killed_at: float
) -> dict[str, float]:
    """Per moved stream: seconds from the kill to its first score under a newer fence."""
    back: dict[str, float] = {}

    def all_back() -> bool:
        for s in moved:
            if s in back:
                continue
            for e in c.scores(s):
                if int(e["fence"]) > fence[s]:
                    back[s] = float(e["scored_at"]) - killed_at
                    break
        return len(back) == len(moved)

    wait_for(all_back, 300, "failover")
    return back


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--streams", type=int, default=6)
    ap.add_argument("--ttl", type=float, default=2.0, help="lease TTL, s")
    ap.add_argument("--renew", type=float, default=0.5, help="renew/assignment interval, s")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-failover-"))
    model = build_tiny_dinov2(tmp / "model")
    clip = stream_clip(tmp)
    rp = RedisProcess(tmp)
    rp.start()
    c = Cluster(tmp, rp.url, model, lease_ttl_s=args.ttl, renew_interval_s=args.renew)
    per_stream: list[float] = []
    per_kill: list[float] = []
    rebalance: list[float] = []
    serial = 0
    try:
        live = [f"r{i}" for i in range(args.replicas)]
        serial = args.replicas
        for n in live:
            c.start(n)
        c.wait_registered(live)
        ids = c.add_streams(live, clip, args.streams)
        wait_for(lambda: even(c.loads(ids, live), len(ids)), 300, "an even split")
        wait_for(lambda: all(c.scores(s) for s in ids), 300, "a score of every stream")
        for k in range(args.kills):
            loads = c.loads(ids, live)
            victim = max(sorted(live), key=lambda n: loads[n])
            moved = [s for s, o in c.owners(ids).items() if o == victim]
            fence = {s: max(int(e["fence"]) for e in c.scores(s)) for s in moved}
            c.signal(victim, signal.SIGKILL)
            killed_at = time.time()
            c.replicas[victim].proc.wait(timeout=30)
            live.remove(victim)
            back = wait_back(c, moved, fence, killed_at)
            per_stream += back.values()
            per_kill.append(max(back.values()))
            name = f"r{serial}"
            serial += 1
            c.start(name)
            c.wait_registered([name], 300)
            joined = time.monotonic()
            live.append(name)
            wait_for(lambda: even(c.loads(ids, live), len(ids)), 300, "rebalancing", 0.05)
            rebalance.append(time.monotonic() - joined)
            print(f"kill {k + 1}/{args.kills}: {victim} ({len(moved)} streams) back in "
                  f"{per_kill[-1]:.2f} s; {name} even after {rebalance[-1]:.2f} s",
                  file=sys.stderr, flush=True)
    finally:
        c.stop_all()
        rp.stop()

    print(f"\nmachine: {platform.machine()}, {platform.processor() or 'cpu'}; "
          f"{args.replicas} replicas, {args.streams} looping file streams, tiny model, "
          f"lease TTL {args.ttl} s, renew interval {args.renew} s\n")
    print("| measure | n | p50 s | p95 s | max s |")
    print("|---|---|---|---|---|")
    for label, v in (
        ("kill to first score elsewhere, per stream", per_stream),
        ("kill to first score elsewhere, all of the victim's streams", per_kill),
        ("new replica registered to even split (within one)", rebalance),
    ):
        print(f"| {label} | {len(v)} | {pct(v, 0.5):.2f} | {pct(v, 0.95):.2f} | "
              f"{max(v):.2f} |")
    print(f"\nmean per stream {statistics.mean(per_stream):.2f} s")


if __name__ == "__main__":
    main()
