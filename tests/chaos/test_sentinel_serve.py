"""Live streams of two `serve` replicas across Redis Sentinel failovers.

Real processes on loopback: one primary, RESTRAV_CHAOS_SENTINEL_REPLICAS replicas
(default 1) and three sentinels
(``tests/sentinelproc.py``), two `restrav serve` replicas (tiny model, leases with
TTL RESTRAV_CHAOS_LEASE_TTL_S, default 2 s, shorter than a failover, renewed every
0.5 s) sharing 8 looping file streams, all through the ``redis+sentinel://`` URL
with ``redis.wait_replicas: 1`` (lease grants and score batches wait for the
replica; ``redis.wait_scores`` is on by default). The primary is SIGKILLed
RESTRAV_CHAOS_FAILOVERS times (default 10): a sentinel promotes the replica, the
old primary comes back as a replica (not promotable until it has resynced), the
streams go on.

Counted on the final primary, per stream, over the stored score entries in write
order: seq gaps (scores missing), seq going backwards or repeated (a score stored
twice, or by two owners), windows written by two owners (grouped by fencing token,
a token that comes back after another, or an owner's windows not strictly after the
previous owner's), and for every kill the time to the stream's first score written
after it (entry id), p50 / p95 over kills and streams. Asserted: every failover
happened, both replicas alive, 0 gaps, 0 backwards, 0 double owners, every stream
scored again after every kill. Figures in RELIABILITY.md.
"""

from __future__ import annotations

import itertools
import os
import statistics
import time
from pathlib import Path

import pytest

from monitor import keys
from tests.cluster_procs import Cluster, stream_clip, wait_for
from tests.sentinelproc import SentinelSetup, retrying, started

FAILOVERS = int(os.environ.get("RESTRAV_CHAOS_FAILOVERS", "10"))
N_STREAMS = 8
LOAD_BETWEEN_S = 4.0
LEASE_TTL_S = float(os.environ.get("RESTRAV_CHAOS_LEASE_TTL_S", "2"))
REPLICAS = int(os.environ.get("RESTRAV_CHAOS_SENTINEL_REPLICAS", "1"))
pytestmark = [pytest.mark.chaos, pytest.mark.timeout(FAILOVERS * 60 + 600)]


def audit(entries: list[tuple[int, dict[str, str]]]) -> dict[str, int]:
    """Gaps, backwards and double-owner counts of one stream's entries (module
    docstring)."""
    out = {"gaps": 0, "backwards": 0, "double_owner": 0}
    for (_, a), (_, b) in itertools.pairwise(entries):
        sa, sb = int(a["seq"]), int(b["seq"])
        if sb <= sa:
            out["backwards"] += 1
        elif sb > sa + 1:
            out["gaps"] += sb - sa - 1
    runs: list[list[dict[str, str]]] = []
    for _, e in entries:
        if runs and runs[-1][0]["fence"] == e["fence"]:
            runs[-1].append(e)
        else:
            runs.append([e])
    seen: set[str] = set()
    for run in runs:
        if run[0]["fence"] in seen:
            out["double_owner"] += 1  # a token writing again after another owner's
        seen.add(run[0]["fence"])
    for a, b in itertools.pairwise(runs):
        if int(b[0]["fence"]) <= int(a[0]["fence"]) or max(
            float(x["wall_end"]) for x in a
        ) >= min(float(x["wall_start"]) for x in b):
            out["double_owner"] += 1
    return out


def last_ms(c: Cluster, sid: str) -> int:
    """When the stream's newest stored score was written (its entry id), 0 if none."""
    newest = retrying(lambda: c.r.xrevrange(keys.stream_scores(sid), count=1), 60.0, 0.2)
    return int(newest[0][0].split("-")[0]) if newest else 0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def test_live_streams_across_sentinel_failovers(tiny_model_dir: Path, tmp_path: Path) -> None:
    with started(SentinelSetup(tmp_path / "redis", replicas=REPLICAS, sentinels=3)) as setup:
        clip = stream_clip(tmp_path)
        c = Cluster(tmp_path, setup.url(), tiny_model_dir, lease_ttl_s=LEASE_TTL_S,
                    renew_interval_s=0.5, redis_settings={"wait_replicas": 1,
                                                          "wait_timeout_s": 1.0})
        kills: list[float] = []
        promote_s: list[float] = []
        rejoin_s: list[float] = []
        try:
            c.start("a")
            c.start("b")
            c.wait_registered(["a", "b"])
            ids = c.add_streams(["a", "b"], clip, N_STREAMS)
            wait_for(lambda: all(last_ms(c, s) for s in ids), 240, "a score on every stream")
            for _ in range(FAILOVERS):
                time.sleep(LOAD_BETWEEN_S)
                t0 = time.time()
                old = setup.kill_primary()
                kills.append(t0)
                setup.wait_promoted(old)
                promote_s.append(time.time() - t0)
                setup.bring_back(old)
                rejoin_s.append(time.time() - t0)
                for name, rep in c.replicas.items():
                    assert rep.alive(), f"{name}:\n{rep.log.read_text()[-3000:]}"
            # every stream scored after the last kill, then count
            wait_for(lambda: all(last_ms(c, s) > kills[-1] * 1000 for s in ids), 120,
                     "a score on every stream after the last failover")
            time.sleep(LOAD_BETWEEN_S)
            totals = {"gaps": 0, "backwards": 0, "double_owner": 0}
            resume: list[float] = []
            unresumed = 0
            stored = 0
            for sid in ids:
                raw = retrying(lambda sid=sid: c.r.xrange(keys.stream_scores(sid)), 60.0, 0.2)
                entries = [(int(i.split("-")[0]), f) for i, f in raw]
                stored += len(entries)
                for k, v in audit(entries).items():
                    totals[k] += v
                for k in kills:
                    first = next((ms for ms, _ in entries if ms >= k * 1000), None)
                    if first is None:
                        unresumed += 1
                    else:
                        resume.append(first / 1000 - k)
            refused = sum(c.metric(n, "restrav_stale_writes_refused_total") for n in c.replicas)
            taken = sum(c.metric(n, "restrav_lease_acquisitions_total") for n in c.replicas)
            print(
                f"\nSentinel failovers under live streams (lease TTL {LEASE_TTL_S:g} s, "
                f"{REPLICAS} Redis replica(s)): "
                f"{len(kills)} SIGKILLs of the primary; "
                f"promotion p50 {statistics.median(promote_s):.1f} s max {max(promote_s):.1f} s;"
                f" old primary a synced replica again p50 {statistics.median(rejoin_s):.1f} s; "
                f"{N_STREAMS} streams, {stored} scores stored; seq gaps {totals['gaps']}, "
                f"backwards {totals['backwards']}, windows of two owners "
                f"{totals['double_owner']}; kill to first score after it p50 "
                f"{pct(resume, 0.5):.1f} s p95 {pct(resume, 0.95):.1f} s max "
                f"{max(resume):.1f} s; leases taken {taken:.0f}, stale writes refused "
                f"{refused:.0f}; failovers the sentinels made "
                f"{setup.sentinel_events('+switch-master')}"
            )
            assert len(kills) == FAILOVERS
            assert totals == {"gaps": 0, "backwards": 0, "double_owner": 0}
            assert unresumed == 0
        finally:
            c.stop_all()
