"""The clip queue and live streams across Redis Cluster failovers, Jepsen-style: every
job a producer was told is enqueued, and every stored score, is checked at the end.

Real processes on loopback: a Redis Cluster of three primaries with one replica each
(``tests/clusterproc.py``, ``cluster-node-timeout`` 2 s), two `restrav worker`
processes and a producer running `restrav submit` one job after another with
``redis.wait_replicas: 1`` (the queue waits per node: the job on the stream's node,
the answer's result in the job id's slot, each note on its own node), and two
`restrav serve` replicas sharing 6 looping file streams whose keys fall in several
slots (leases TTL 2 s; serve with ``redis.wait_replicas: 1`` too: each node's score
calls and lease grants, then ``WAIT`` on that node's connection). A primary is
SIGKILLed RESTRAV_CHAOS_CLUSTER_KILLS times (default 3; the first one the node serving
``restrav:jobs``, then the others in turn): its replica takes its slots, the killed
node comes back empty as a replica of that new primary, the load goes on. Then a
primary is SIGSTOPped RESTRAV_CHAOS_CLUSTER_FREEZES times (default 1) until its replica
took its slots, and SIGCONTed: it rejoins as a replica; its late writes must not count
(score batches and lease grants sent to it then are not done: ``MOVED``, or no replica
to acknowledge).

Counted at the end: jobs acknowledged to the producer, answered, lost (acknowledged,
no result), answered twice (more than one note on ``restrav:results`` not marked
duplicate), scored twice (allowed: delivery is at least once); per stream the audit of
``tests/chaos/test_sentinel_serve.py`` (seq gaps, seq backwards, windows of two
owners) and the time from each kill to the stream's first score after it. Asserted:
0 lost, 0 answered twice, every failover happened, every process alive, and per
stream 0 seq gaps, 0 seq backwards, 0 double owners (without serve's ``WAIT`` a score
the killed primary had not replicated was a gap: 8 in a 6-kill run). Figures in
RELIABILITY.md.
"""

from __future__ import annotations

import itertools
import os
import statistics
import time
from pathlib import Path

import pytest

from monitor import keys
from monitor.queue import connect
from tests.chaos.test_sentinel_failover import (
    DURABLE,
    Producer,
    audit_jobs,
    job_figures,
)
from tests.chaos.test_sentinel_serve import audit, last_ms, pct
from tests.cluster_procs import Cluster, stream_clip
from tests.clusterproc import ClusterSetup
from tests.queue_helpers import wait_for
from tests.sentinelproc import retrying, started
from tests.test_queue_procs import Workers, good_clips

KILLS = int(os.environ.get("RESTRAV_CHAOS_CLUSTER_KILLS", "3"))
FREEZES = int(os.environ.get("RESTRAV_CHAOS_CLUSTER_FREEZES", "1"))
N_STREAMS = 6
LOAD_BETWEEN_S = 4.0
pytestmark = [pytest.mark.chaos, pytest.mark.timeout((KILLS + FREEZES) * 90 + 900)]


def victim(setup: ClusterSetup, n: int) -> int:
    """The primary to kill the ``n``-th time: the one serving ``restrav:jobs`` first,
    then the primaries in turn."""
    if n == 0:
        return setup.port_of_slot_owner(keys.JOBS)
    primaries = setup.primaries()
    return primaries[n % len(primaries)]


def test_queue_and_streams_across_redis_cluster_failovers(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    with started(ClusterSetup(tmp_path / "redis", password="hunter2")) as setup:
        url = setup.url()
        client = connect(url, read_timeout_s=10)
        clips = good_clips(tmp_path / "clips", 4)
        w = Workers(url, tiny_model_dir, tmp_path)
        producer = Producer(url, clips, tmp_path, "p")
        serve = Cluster(tmp_path, url, tiny_model_dir, lease_ttl_s=2.0, renew_interval_s=0.5,
                        redis_settings={"wait_replicas": 1, "wait_timeout_s": 1.0})
        kills: list[float] = []
        promote_s: list[float] = []
        try:
            for name in ("w1", "w2"):
                w.start(name, **DURABLE)
            serve.start("a")
            serve.start("b")
            w.wait_ready(client)
            serve.wait_registered(["a", "b"])
            ids = serve.add_streams(["a", "b"], stream_clip(tmp_path), N_STREAMS)
            slots = {setup.port_of_slot_owner(keys.stream_lease(s)) for s in ids}
            assert len(slots) > 1, "the streams' keys should be on several nodes"
            producer.thread.start()
            wait_for(lambda: all(last_ms(serve, s) for s in ids), 240, "a score on every stream")
            wait_for(lambda: len(producer.acknowledged) >= 3, 120, "the first jobs")
            for n in range(KILLS + FREEZES):
                time.sleep(LOAD_BETWEEN_S)
                port = victim(setup, n)
                t0 = time.time()
                kills.append(t0)
                if n < KILLS:
                    setup.kill(port)
                    setup.wait_promoted(port)
                    promote_s.append(time.time() - t0)
                    setup.bring_back(port)
                else:  # frozen until its replica took over, then let go: it rejoins
                    setup.freeze(port)
                    try:
                        setup.wait_promoted(port)
                        promote_s.append(time.time() - t0)
                    finally:
                        setup.thaw(port)
                    setup.wait_role(port, "slave")
                for name, proc in w.procs.items():
                    assert proc.poll() is None, w.log(name)
                for name, rep in serve.replicas.items():
                    assert rep.alive(), f"{name}:\n{rep.log.read_text()[-3000:]}"
            wait_for(lambda: all(last_ms(serve, s) > kills[-1] * 1000 for s in ids), 120,
                     "a score on every stream after the last failover")
            time.sleep(LOAD_BETWEEN_S)
            producer.stop.set()
            producer.thread.join(150)
            acked, refused = producer.acknowledged, producer.refused
            lost, twice, scored_twice, _ = audit_jobs(client, acked)
            totals = {"gaps": 0, "backwards": 0, "double_owner": 0}
            resume: list[float] = []
            stored = 0
            where: list[str] = []  # each gap's stream, seqs and fences (the failure message)
            for sid in ids:
                raw = retrying(lambda sid=sid: serve.r.xrange(keys.stream_scores(sid)), 60.0)
                entries = [(int(i.split("-")[0]), f) for i, f in raw]
                stored += len(entries)
                for k, v in audit(entries).items():
                    totals[k] += v
                where += [f"{sid} seq {a['seq']} (fence {a['fence']}, {ma} ms) -> {b['seq']} "
                          f"(fence {b['fence']}, {mb} ms)"
                          for (ma, a), (mb, b) in itertools.pairwise(entries)
                          if int(b["seq"]) != int(a["seq"]) + 1]
                resume += [first / 1000 - k for k in kills
                           if (first := next((ms for ms, _ in entries if ms >= k * 1000), None))]
            refused_writes = sum(serve.metric(n, "restrav_stale_writes_refused_total")
                                 for n in serve.replicas)
            print(
                f"\nRedis Cluster failovers: {KILLS} SIGKILLs and {FREEZES} SIGSTOPs (then "
                f"SIGCONT) of a primary; promotion "
                f"p50 {statistics.median(promote_s):.1f} s max {max(promote_s):.1f} s; queue: "
                f"{job_figures(acked, refused, lost, twice, scored_twice)}; streams: "
                f"{N_STREAMS} on {len(slots)} nodes, {stored} scores stored, seq gaps "
                f"{totals['gaps']}, "
                f"backwards {totals['backwards']}, double owners {totals['double_owner']}, "
                f"stale writes refused {refused_writes:g}; kill to first score after it p50 "
                f"{pct(resume, 0.5):.1f} s p95 {pct(resume, 0.95):.1f} s"
            )
            assert (len(kills), lost, twice) == (KILLS + FREEZES, [], []), "see the figures"
            assert totals == {"gaps": 0, "backwards": 0, "double_owner": 0}, (
                f"kills at {[round(k * 1000) for k in kills]} ms; " + "; ".join(where))
            assert len(acked) >= KILLS
        finally:
            producer.stop.set()
            if producer.thread.is_alive():
                producer.thread.join(150)
            serve.stop_all()
            codes = w.stop()
            client.close()
        assert all(c == 0 for c in codes.values()), codes
