"""Replicas sharing live streams under faults: real `restrav serve` processes, real Redis.

Scenarios (issue 10, "Prove it"): 3 replicas and 12 streams split evenly; SIGKILL
one (its streams run again elsewhere; no seq/window overlap between owners);
a 4th replica joins (rebalance with every handover voluntary, nothing owned
twice); SIGSTOP past the lease TTL then SIGCONT (its writes refused and counted,
its streams stopped, nothing of it lands after the new owner's first score);
an owner cut off from Redis (its buffered writes refused after the heal);
Redis restarted for longer than the TTL (replicas re-acquire, nothing owned
twice); SIGTERM drains a replica (its leases released, taken over at once).

"Nothing owned twice" is checked on what Redis kept: for every stream, grouped
by fencing token, each owner's seq range and window times lie strictly after
the previous owner's (:func:`tests.cluster_procs.check_no_overlap`); and in the
fault-free moves (join, drain) no replica ever found its lease taken and no
write was refused, i.e. every handover was a release by a stopped owner.
Figures are printed (run with -s) and recorded in RELIABILITY.md.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.cluster.manager import ORPHAN_TICKS
from monitor.types import WINDOW_S
from tests.cluster_procs import Cluster, PartitionProxy, check_no_overlap, stream_clip, wait_for
from tests.redisproc import RedisProcess

pytestmark = pytest.mark.chaos

TTL_S = 2.0
RENEW_S = 0.5
N_STREAMS = 12
SOURCE_BACKOFF_CAP_S = 1.0  # serve.source.backoff.cap_s of tests.cluster_procs.Cluster
FAILOVER_SLACK_S = 30.0
# "Within lease TTL + backoff", as a bound that can fail but is not timing-flaky: the
# lease (and the dead replica's heartbeat) expire after TTL_S; the stream is then
# acquired on a survivor's next tick, at the latest by the orphan rule ORPHAN_TICKS
# ticks later; its source opens (one backoff at most) and its first window (WINDOW_S)
# is scored. That sum is 7 s; measured failover is 4.1-4.6 s. FAILOVER_SLACK_S
# absorbs a loaded 2-core machine (process stalls, FFmpeg and model start, the CPU
# embedder queue) without letting through what the bound is for: a failover that
# does not come from lease expiry (a stream kept assigned to the dead replica, a
# backoff growing without cap, waiting for a restart) takes minutes or never comes.
FAILOVER_BOUND_S = (TTL_S + (ORPHAN_TICKS + 1) * RENEW_S + SOURCE_BACKOFF_CAP_S + WINDOW_S
                    + FAILOVER_SLACK_S)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return stream_clip(tmp_path_factory.mktemp("chaos-cluster"))


@pytest.fixture
def redis_proc(tmp_path: Path) -> Iterator[RedisProcess]:
    rp = RedisProcess(tmp_path / "redis", appendonly=True)
    rp.dir.mkdir()
    rp.start()
    try:
        yield rp
    finally:
        rp.stop()


@pytest.fixture
def cluster(tmp_path: Path, tiny_model_dir: Path, redis_proc: RedisProcess) -> Iterator[Cluster]:
    c = Cluster(tmp_path, redis_proc.url, tiny_model_dir, lease_ttl_s=TTL_S,
                renew_interval_s=RENEW_S, max_moves=2)
    try:
        yield c
    finally:
        c.stop_all()


def within_one(loads: dict[str, int]) -> bool:
    return sum(loads.values()) == N_STREAMS and max(loads.values()) - min(loads.values()) <= 1


def start_balanced(c: Cluster, names: list[str], clip: Path) -> list[str]:
    for n in names:
        c.start(n)
    c.wait_registered(names)
    ids = c.add_streams(names, clip, N_STREAMS)
    wait_for(lambda: within_one(c.loads(ids, names)), 180, f"an even split over {names}")
    wait_for(lambda: all(c.scores(s) for s in ids), 180, "a score of every stream")
    return ids


def involuntary(c: Cluster, names: list[str]) -> tuple[float, float]:
    """(leases found taken, writes refused) summed over the replicas."""
    taken = sum(c.metric(n, "restrav_lease_losses_total", 'reason="taken"') for n in names)
    refused = sum(c.metric(n, "restrav_stale_writes_refused_total") for n in names)
    return taken, refused


def assert_no_overlap(c: Cluster, ids: list[str]) -> int:
    return sum(len(check_no_overlap(c.scores(s))) for s in ids)


def test_even_split_sigkill_failover_and_a_fourth_replica_rebalances(
    cluster: Cluster, clip: Path
) -> None:
    c = cluster
    names = ["r1", "r2", "r3"]
    ids = start_balanced(c, names, clip)
    print(f"\n3 replicas, {N_STREAMS} streams: loads {c.loads(ids, names)}")

    owners = c.owners(ids)
    moved = [s for s in ids if owners[s] == "r1"]
    killed_at = time.time()
    c.signal("r1", signal.SIGKILL)
    c.replicas["r1"].proc.wait(timeout=30)
    back: dict[str, float] = {}

    def all_back() -> bool:
        for s in moved:
            if s not in back:
                for e in c.scores(s):
                    if e["owner"] != "r1":
                        back[s] = float(e["scored_at"]) - killed_at
                        break
        return len(back) == len(moved)

    wait_for(all_back, 180, "the killed replica's streams to score elsewhere")
    print(f"SIGKILL r1 ({len(moved)} streams, TTL {TTL_S} s): kill to first score elsewhere "
          f"min {min(back.values()):.1f} s, max {max(back.values()):.1f} s")
    assert max(back.values()) < FAILOVER_BOUND_S, (back, FAILOVER_BOUND_S)
    survivors = ["r2", "r3"]
    wait_for(lambda: within_one(c.loads(ids, survivors)), 120, "an even split over r2, r3")
    for s in moved:
        entries = c.scores(s)
        assert all(float(e["wall_end"]) < killed_at for e in entries if e["owner"] == "r1")
        assert all(float(e["wall_start"]) > killed_at for e in entries if e["owner"] != "r1")
        first_new = next(i for i, e in enumerate(entries) if e["owner"] != "r1")
        assert all(e["owner"] == "r1" for e in entries[:first_new])
        assert all(e["owner"] != "r1" for e in entries[first_new:])
        assert float(entries[first_new]["wall_start"]) > max(
            float(e["wall_end"]) for e in entries[:first_new])  # no window spans the outage
    assert_no_overlap(c, ids)

    before = involuntary(c, survivors)
    c.start("r4")
    joined_at = time.monotonic()
    live = ["r2", "r3", "r4"]
    wait_for(lambda: within_one(c.loads(ids, live)), 180, "the 4th replica to get its share")
    print(f"r4 joined: even ({c.loads(ids, live)}) after {time.monotonic() - joined_at:.1f} s "
          "(process start included)")
    wait_for(lambda: all(c.first_score_by(s, o) for s, o in c.owners(ids).items() if o),
             120, "every moved stream to score on its new owner")
    assert involuntary(c, live) == (before[0], before[1]) == (0.0, 0.0)
    handovers = sum(c.metric(n, "restrav_handovers_total", 'reason="rebalance"') for n in live)
    assert handovers == c.loads(ids, live)["r4"]  # each move: one voluntary release
    assert_no_overlap(c, ids)


def test_sigstop_past_the_ttl_then_sigcont_refuses_its_writes(
    cluster: Cluster, clip: Path
) -> None:
    c = cluster
    names = ["r1", "r2", "r3"]
    ids = start_balanced(c, names, clip)
    owners = c.owners(ids)
    frozen = [s for s in ids if owners[s] == "r1"]
    c.signal("r1", signal.SIGSTOP)
    stopped_at = time.time()
    wait_for(lambda: all(c.first_score_by(s, "r2") or c.first_score_by(s, "r3")
                         for s in frozen), 180, "r1's streams to score elsewhere")
    time.sleep(1.0)  # r1 frozen with work in flight: decoded frames, queued samples, buffer
    c.signal("r1", signal.SIGCONT)
    print(f"\nSIGSTOP r1 for {time.time() - stopped_at:.1f} s (TTL {TTL_S} s), {len(frozen)} "
          "streams")

    def r1_stopped_them() -> bool:
        return c.metric("r1", "restrav_lease_losses_total") >= len(frozen)

    wait_for(r1_stopped_them, 120, "r1 to stop the streams it lost")
    time.sleep(3.0)  # anything r1 still had would have landed by now
    refused = {s: c.metric("r1", "restrav_stale_writes_refused_total", f'stream="{s}"')
               for s in ids}
    losses = {r: c.metric("r1", "restrav_lease_losses_total", f'reason="{r}"')
              for r in ("taken", "refused", "expired")}
    print(f"after SIGCONT: r1 writes refused {sum(refused.values()):.0f}, leases lost {losses}")
    # On waking, r1 races its first renewal (finds the leases taken: "taken") against
    # writes of the work it had in flight (refused as stale, counted, the stream stops:
    # "refused"). Which comes first is up to the scheduler (RELIABILITY run 2 refused
    # none), so refusal itself is proven by the partition scenario; here: every frozen
    # stream lost exactly once and for one of those reasons, every "refused" loss backed
    # by counted refusals of that stream, no refusal for a stream r1 did not lose ...
    assert losses["taken"] + losses["refused"] == len(frozen) and losses["expired"] == 0
    assert sum(refused[s] for s in frozen) >= losses["refused"]
    assert all(n == 0 for s, n in refused.items() if s not in frozen)
    # ... and nothing of r1's frozen ownership landed after the new owner's first score
    # (r1 may own the stream again later, after a rebalance: under a newer fence)
    for s in frozen:
        entries = c.scores(s)
        first_new = next(i for i, e in enumerate(entries) if e["owner"] != "r1")
        frozen_fence = int(entries[first_new - 1]["fence"])
        assert entries[first_new - 1]["owner"] == "r1"
        assert all(int(e["fence"]) > frozen_fence for e in entries[first_new:]), s
        runs = check_no_overlap(entries)
        assert len(runs) >= 2
    assert_no_overlap(c, ids)


def test_partitioned_owner_stops_and_its_buffered_writes_are_refused(
    cluster: Cluster, clip: Path, redis_proc: RedisProcess
) -> None:
    c = cluster
    proxy = PartitionProxy(redis_proc.port)
    try:
        c.start("r1", redis_url=proxy.url)
        for n in ("r2", "r3"):
            c.start(n)
        names = ["r1", "r2", "r3"]
        c.wait_registered(names)
        ids = c.add_streams(["r2"], clip, N_STREAMS)
        wait_for(lambda: within_one(c.loads(ids, names)), 180, "an even split")
        wait_for(lambda: all(c.scores(s) for s in ids), 180, "a score of every stream")
        cut_off = [s for s, o in c.owners(ids).items() if o == "r1"]
        proxy.cut()  # r1 keeps scoring into its sink buffer, but can renew nothing
        wait_for(lambda: c.metric("r1", "restrav_lease_losses_total", 'reason="expired"')
                 >= len(cut_off), 120, "r1 to stop its streams after a TTL without renewal")
        wait_for(lambda: all(c.first_score_by(s, "r2") or c.first_score_by(s, "r3")
                             for s in cut_off), 180, "r1's streams to score elsewhere")
        buffered = c.metric("r1", "restrav_sink_buffered", 'sink="redis"')
        proxy.heal()
        wait_for(lambda: c.metric("r1", "restrav_stale_writes_refused_total") >= 1, 120,
                 "r1's buffered writes to be refused")
        wait_for(lambda: c.metric("r1", "restrav_sink_buffered", 'sink="redis"') == 0, 120,
                 "r1's buffer to drain")
        refused = c.metric("r1", "restrav_stale_writes_refused_total")
        print(f"\npartition of r1 ({len(cut_off)} streams): {buffered:.0f} writes buffered, "
              f"{refused:.0f} refused as stale after the heal")
        assert refused >= 1
        for s in cut_off:
            assert len(check_no_overlap(c.scores(s))) >= 2
        assert_no_overlap(c, ids)
    finally:
        proxy.close()


def test_redis_restart_then_drain_hands_over(
    cluster: Cluster, clip: Path, redis_proc: RedisProcess
) -> None:
    c = cluster
    names = ["r1", "r2", "r3"]
    ids = start_balanced(c, names, clip)
    fences = {s: max(int(e["fence"]) for e in c.scores(s)) for s in ids}
    redis_proc.stop()
    time.sleep(TTL_S * 1.5)  # down for longer than a lease: every replica stops its streams
    redis_proc.start()
    restarted_at = time.time()
    wait_for(lambda: within_one(c.loads(ids, names)), 180, "every stream owned again")

    def rescored() -> bool:
        return all(any(int(e["fence"]) > fences[s] for e in c.scores(s)) for s in ids)

    wait_for(rescored, 180, "every stream to score under a new lease")
    print(f"\nRedis down {TTL_S * 1.5:.1f} s: all {N_STREAMS} streams re-acquired and scoring "
          f"{time.time() - restarted_at:.1f} s after Redis came back")
    assert_no_overlap(c, ids)

    owners = c.owners(ids)
    leaving = [s for s in ids if owners[s] == "r3"]
    before = involuntary(c, ["r1", "r2"])
    c.signal("r3", signal.SIGTERM)
    drained_at = time.monotonic()
    assert c.replicas["r3"].proc.wait(timeout=60) == 0
    wait_for(lambda: all(o in ("r1", "r2") for o in c.owners(ids).values()), 120,
             "r3's streams to be taken over")
    print(f"SIGTERM r3: {len(leaving)} streams handed over, owned again "
          f"{time.monotonic() - drained_at:.1f} s after the signal (exit included)")
    assert f"handed over {len(leaving)} streams" in c.replicas["r3"].log.read_text()
    assert involuntary(c, ["r1", "r2"]) == before
    wait_for(lambda: all(c.first_score_by(s, c.owners([s])[s] or "") for s in leaving), 120,
             "the handed-over streams to score")
    assert_no_overlap(c, ids)
