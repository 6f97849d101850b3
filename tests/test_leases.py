"""Leases, fencing and assignment against a real redis-server (the core properties, lean).

Exclusive ownership, renewal and loss, fenced writes refused when stale, and
the assignment plan converging to an even split without double ownership.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator

import numpy as np
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from monitor import keys
from monitor.cluster.assignment import plan, targets
from monitor.cluster.leases import Lease, LeaseStore, ReplicaInfo, parse_lease
from monitor.live.alerts import AlertEvent
from monitor.live.sinks import RedisSink
from monitor.live.sinks.fields import event_fields
from monitor.metrics import StreamMetrics
from monitor.types import Score, StreamScore, WindowFeatures


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.from_url(redis_url)
    try:
        yield c
    finally:
        await c.aclose()


def score(stream: str, seq: int, fence: int | None) -> StreamScore:
    wf = WindowFeatures(features=np.zeros(21), repeated_frames=0)
    return StreamScore(stream, seq, 0, 0.0, 2.0, Score(window=wf, p_ai=0.5), arrival_s=0.0,
                       scored_at=1000.0 + seq, fence=fence)


async def test_one_owner_at_a_time_and_fence_grows(client: aioredis.Redis) -> None:
    a = LeaseStore(client, "a", lease_ttl_s=30)
    b = LeaseStore(client, "b", lease_ttl_s=30)
    results = await asyncio.gather(*(s.acquire("cam") for s in (a, b, a, b)))
    assert sorted(r is not None for r in results) == [False, False, False, True]
    t1 = next(r for r in results if r is not None)
    owner = a if results.index(t1) % 2 == 0 else b
    other = b if owner is a else a
    assert (await a.owners(["cam"]))["cam"].owner == owner.replica  # type: ignore[union-attr]
    assert await other.renew({"cam": t1}) == {"cam": False}  # the token is not its lease
    assert await other.release("cam", t1) is False
    assert await owner.renew({"cam": t1}) == {"cam": True}
    assert await owner.release("cam", t1) is True
    t2 = await other.acquire("cam")
    assert t2 is not None and t2 > t1
    assert await owner.renew({"cam": t1}) == {"cam": False}  # taken: the old owner must stop


async def test_expired_lease_is_free_and_renewal_retakes_it_only_if_untaken(
    client: aioredis.Redis,
) -> None:
    a = LeaseStore(client, "a", lease_ttl_s=0.05)
    b = LeaseStore(client, "b", lease_ttl_s=30)
    t1 = await a.acquire("x")
    t_y = await a.acquire("y")
    assert t1 is not None and t_y is not None
    await asyncio.sleep(0.2)
    assert await a.owners(["x", "y"]) == {"x": None, "y": None}
    t2 = await b.acquire("x")  # x taken by b after expiry; y left free
    assert t2 is not None
    assert await a.renew({"x": t1, "y": t_y}) == {"x": False, "y": True}
    assert (await b.owners(["y"]))["y"].owner == "a"  # type: ignore[union-attr]


async def test_stale_fenced_writes_are_refused_and_counted(client: aioredis.Redis) -> None:
    a = LeaseStore(client, "a", lease_ttl_s=30)
    b = LeaseStore(client, "b", lease_ttl_s=30)
    t_a = await a.acquire("cam")
    assert t_a is not None
    registry = CollectorRegistry()
    refused: list[tuple[str, int]] = []
    sink = RedisSink(client, metrics=StreamMetrics(registry), owner="a",
                     on_refused=lambda s, t: refused.append((s, t)))
    await sink.start()
    sink.publish(score("cam", 0, t_a))
    assert await sink.flush(10)
    # a is paused past its TTL: b takes the lease (the fence grows), then a wakes up
    await a.client.delete(keys.stream_lease("cam"))
    t_b = await b.acquire("cam")
    assert t_b is not None and t_b > t_a
    sink.publish(score("cam", 1, t_a))
    sink.publish_event(AlertEvent("cam", "alert_start", 0.9, 1.0, 0.5, fence=t_a))
    sink.publish(score("cam", 7, t_b))  # b's current token, but not b: the lease is not a's
    sink.publish(score("other", 3, None))  # unfenced writes are unaffected
    assert await sink.flush(10)
    await sink.aclose()
    sink_b = RedisSink(client, owner="b")
    await sink_b.start()
    sink_b.publish(score("cam", 7, t_b))
    # the owner's alert event is written, with its owner and fence
    ended = AlertEvent("cam", "alert_end", 0.2, 3.0, 1.0, fence=t_b, reason="calm")
    sink_b.publish_event(ended)
    assert await sink_b.flush(10)
    await sink_b.aclose()
    events = [{k.decode(): v.decode() for k, v in e.items()}
              for _, e in await client.xrange(keys.EVENTS)]
    assert events == [{**event_fields(ended), "owner": "b", "fence": str(t_b)}]
    entries = await client.xrange(keys.stream_scores("cam"))
    assert [(e[b"seq"], e[b"owner"], int(e[b"fence"])) for _, e in entries] == [
        (b"0", b"a", t_a), (b"7", b"b", t_b)
    ]
    latest = await client.hgetall(keys.stream_latest("cam"))
    assert latest[b"seq"] == b"7"
    assert await client.xlen(keys.stream_scores("other")) == 1
    assert refused == [("cam", t_a), ("cam", t_a), ("cam", t_b)]
    assert registry.get_sample_value(
        "restrav_stale_writes_refused_total", {"stream": "cam"}) == 3.0


async def test_a_lapsed_lease_keeps_its_writes_until_its_renewal(
    client: aioredis.Redis,
) -> None:
    """A lease that expired with nobody taking it (a renewal that came late, or that a
    failover lost) is taken back by the owner's next renewal under the same token: the
    writes made meanwhile wait for it, in order. Refused and dropped, they were a gap
    in ``seq`` under one token (the Redis Cluster chaos run: 16 gaps under load)."""
    a = LeaseStore(client, "a", lease_ttl_s=30)
    t = await a.acquire("cam")
    assert t is not None
    refused: list[tuple[str, int]] = []
    sink = RedisSink(client, owner="a", on_refused=lambda s, k: refused.append((s, k)),
                     lapse_grace_s=30, retry_floor_s=0.05, retry_cap_s=0.1)
    await sink.start()

    async def seqs() -> list[int]:
        return [int(e[b"seq"]) for _, e in await client.xrange(keys.stream_scores("cam"))]

    sink.publish(score("cam", 0, t))
    assert await sink.flush(10)
    await client.delete(keys.stream_lease("cam"))  # expired; the counter is still t
    sink.publish(score("cam", 1, t))
    sink.publish(score("cam", 2, t))
    assert not await sink.flush(0.5)
    assert not sink.available and "lapsed" in sink.last_error
    assert await seqs() == [0] and refused == []
    assert await a.renew({"cam": t}) == {"cam": True}  # taken back under the same token
    sink.publish(score("cam", 3, t))
    assert await sink.flush(10)
    assert await seqs() == [0, 1, 2, 3] and refused == [] and sink.available
    # a lapse no renewal ends (the renewals stopped): refused after the grace
    sink.lapse_grace_s = 0.3
    await client.delete(keys.stream_lease("cam"))
    sink.publish(score("cam", 4, t))
    assert await sink.flush(10)
    assert await seqs() == [0, 1, 2, 3] and refused == [("cam", t)]
    # a lease the replica let go (released or lost): refused at once, whatever the grace
    sink.lapse_grace_s = 3600
    sink.released("cam", t)
    sink.publish(score("cam", 5, t))
    assert await sink.flush(10)
    assert await seqs() == [0, 1, 2, 3] and refused == [("cam", t)] * 2
    await sink.aclose()


async def test_a_former_owner_stays_fenced_after_redis_lost_its_data(
    client: aioredis.Redis,
) -> None:
    """Redis restarts without data: the fence counter starts again at 1, so the new
    owner gets the token the former owner still holds; the lease tells them apart."""
    a = LeaseStore(client, "a", lease_ttl_s=30)
    b = LeaseStore(client, "b", lease_ttl_s=30)
    registry = CollectorRegistry()
    refused: list[tuple[str, int]] = []
    sink_a = RedisSink(client, metrics=StreamMetrics(registry), owner="a",
                       on_refused=lambda s, t: refused.append((s, t)))
    sink_b = RedisSink(client, owner="b")
    for sk in (sink_a, sink_b):
        await sk.start()
    try:
        t_a = await a.acquire("cam")
        assert t_a == 1
        sink_a.publish(score("cam", 500, t_a))
        assert await sink_a.flush(10)
        await client.flushall()  # a restart without persistence (or an AOF that lost it)
        sink_a.publish(score("cam", 501, t_a))  # no lease at all: refused
        assert await sink_a.flush(10)
        assert await b.acquire("cam") == t_a  # the same token, another owner
        sink_b.publish(score("cam", 0, t_a))
        assert await sink_b.flush(10)
        sink_a.publish(score("cam", 502, t_a))  # a paused former owner wakes up
        sink_a.publish_event(AlertEvent("cam", "alert_end", 0.1, 3.0, 0.5, fence=t_a))
        assert await sink_a.flush(10)
        sink_b.publish(score("cam", 1, t_a))
        assert await sink_b.flush(10)
    finally:
        for sk in (sink_a, sink_b):
            await sk.aclose()
    entries = await client.xrange(keys.stream_scores("cam"))
    assert [(e[b"owner"], e[b"seq"]) for _, e in entries] == [(b"b", b"0"), (b"b", b"1")]
    assert (await client.hgetall(keys.stream_latest("cam")))[b"owner"] == b"b"
    assert await client.xlen(keys.EVENTS) == 0
    assert refused == [("cam", t_a)] * 3
    assert registry.get_sample_value(
        "restrav_stale_writes_refused_total", {"stream": "cam"}) == 3.0
    assert await a.renew({"cam": t_a}) == {"cam": False}  # and its renewal says: stop


async def test_heartbeats_list_live_replicas_and_prune_dead_ones(
    client: aioredis.Redis,
) -> None:
    a = LeaseStore(client, "a", lease_ttl_s=30)
    b = LeaseStore(client, "b", lease_ttl_s=0.05)
    await a.heartbeat(ReplicaInfo("a", 8, 2))
    await b.heartbeat(ReplicaInfo("b", 4, 0, draining=True))
    assert await a.replicas() == [ReplicaInfo("a", 8, 2), ReplicaInfo("b", 4, 0, True)]
    await asyncio.sleep(0.2)
    assert await a.replicas() == [ReplicaInfo("a", 8, 2)]
    assert await client.smembers(keys.REPLICAS) == {b"a"}
    for bad in ("has space", ""):
        with pytest.raises(ValueError, match="must be non-empty without spaces"):
            LeaseStore(client, bad, 1.0)


async def test_replicas_read_older_and_broken_heartbeats_and_unregister(
    client: aioredis.Redis,
) -> None:
    """A name without a heartbeat (sorted first) or with a broken one is pruned and the
    rest still listed; a heartbeat without ``owned``/``draining`` (an older replica)
    reads as 0 / False; a leaving replica's unregister removes it."""
    a, z = LeaseStore(client, "a", 30), LeaseStore(client, "z", 30)
    await client.sadd(keys.REPLICAS, "0gone", "m", "x")
    await client.set(keys.replica_key("m"), json.dumps({"capacity": 3}))
    await client.set(keys.replica_key("x"), "not json")
    await a.heartbeat(ReplicaInfo("a", 8, 2))
    await z.heartbeat(ReplicaInfo("z", 1, 0))
    assert await a.replicas() == [ReplicaInfo("a", 8, 2), ReplicaInfo("m", 3, 0, False),
                                  ReplicaInfo("z", 1, 0)]
    assert await client.smembers(keys.REPLICAS) == {b"a", b"m", b"z"}
    await z.unregister()
    assert await a.replicas() == [ReplicaInfo("a", 8, 2), ReplicaInfo("m", 3, 0, False)]
    assert not await client.exists(keys.replica_key("z"))


def test_parse_lease_reads_owner_and_fence_and_refuses_malformed_values() -> None:
    assert parse_lease(b"replica-a 7") == Lease("replica-a", 7)
    assert parse_lease("replica-a 7") == Lease("replica-a", 7)  # a decoding client
    for bad in (None, b" 7", b"replica-a", b"replica-a x", b""):
        assert parse_lease(bad) is None, bad


async def test_last_seq_reads_the_newest_stored_score(client: aioredis.Redis) -> None:
    store = LeaseStore(client, "a", 30)
    assert await store.last_seq("cam") is None
    await client.hset(keys.stream_latest("cam"), "seq", "41")
    assert await store.last_seq("cam") == 41
    await client.hset(keys.stream_latest("cam"), "seq", "garbage")
    assert await store.last_seq("cam") is None


def simulate(names: list[str], streams: list[str], owners: dict[str, str | None],
             capacity: int = 100, max_moves: int = 2, rounds: int = 30) -> list[dict[str, int]]:
    """Every replica plans on the same snapshot each round; releases happen before
    acquisitions; the lease rule (first acquire wins) is applied. Returns the loads."""
    history = []
    order: dict[str, list[str]] = {n: [s for s in streams if owners.get(s) == n] for n in names}
    for _ in range(rounds):
        reps = [ReplicaInfo(n, capacity) for n in names]
        plans = {n: plan(n, reps, owners, list(reversed(order[n])), max_moves) for n in names}
        for n, p in plans.items():
            assert len(p.release) <= max_moves
            for s in p.release:
                owners[s] = None
                order[n].remove(s)
        for n, p in plans.items():
            for s in p.acquire:
                if owners[s] is None:  # SET NX: only the first one gets it
                    owners[s] = n
                    order[n].append(s)
        history.append({n: sum(1 for o in owners.values() if o == n) for n in names})
    return history


def test_assignment_spreads_new_streams_evenly() -> None:
    streams = [f"s{i:02d}" for i in range(12)]
    loads = simulate(["a", "b", "c"], streams, {s: None for s in streams}, rounds=3)
    assert loads[0] == {"a": 4, "b": 4, "c": 4}
    assert loads[-1] == loads[0]  # stable: no churn once even


@pytest.mark.parametrize("n_streams", [12, 13, 14])
def test_a_joining_replica_gets_its_share_gradually(n_streams: int) -> None:
    streams = [f"s{i:02d}" for i in range(n_streams)]
    owners: dict[str, str | None] = {s: ("a" if i % 2 else "b") for i, s in enumerate(streams)}
    for s in streams[:3]:
        owners[s] = "c"
    loads = simulate(["a", "b", "c", "d"], streams, owners, max_moves=1, rounds=20)
    final = loads[-1]
    assert max(final.values()) - min(final.values()) <= 1
    assert sum(final.values()) == n_streams
    for before, after in itertools.pairwise(loads):
        assert all(before[n] - after[n] <= 1 for n in before)  # at most max_moves each round
    assert loads[-1] == loads[-2]


def test_capacity_bounds_assignment_and_targets() -> None:
    reps = [ReplicaInfo("a", 2), ReplicaInfo("b", 10)]
    owners: dict[str, str | None] = {f"s{i}": None for i in range(10)}
    # most free capacity first: b until its free capacity is down to a's
    assert plan("b", reps, owners, [], 2).acquire == [f"s{i}" for i in range(8)] + ["s9"]
    assert plan("a", reps, owners, [], 2).acquire == ["s8"]
    assert targets(reps, {"a": 0, "b": 0}, 10) == {"a": 1, "b": 9}
    even = [ReplicaInfo("a", 5), ReplicaInfo("b", 5)]
    assert targets(even, {"a": 3, "b": 2}, 5) == {"a": 3, "b": 2}  # ties: fewest moves
    assert targets(even, {"a": 2, "b": 3}, 5) == {"a": 2, "b": 3}
    assert targets(reps, {}, 20) == {"a": 2, "b": 10}  # capped: the rest stays unowned
    loads = simulate(["a", "b"], list(owners), dict(owners), capacity=100, rounds=1)
    assert loads[0] == {"a": 5, "b": 5}
    full = plan("a", [ReplicaInfo("a", 1)], {"x": "a", "y": None}, ["x"], 2)
    assert full.acquire == [] and full.release == []
    draining = plan("a", [ReplicaInfo("a", 9, draining=True)], {"x": None}, [], 2)
    assert draining.acquire == []
