"""``WAIT`` for serve on a real Redis Cluster (3 primaries, 3 replicas on loopback):
the sink's score and event calls and the lease grants are sent per node, each node's
writes then ``WAIT`` on the same connection. A replica frozen (SIGSTOP) misses its
acknowledgement: that node's writes count as not done (the others are done), are
written again once it answers, and each fenced score is stored once; a lease grant
not acknowledged is not taken. Across a primary's SIGKILL the sink's writes reach the
promoted replica (slot map read again), each score once."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import pytest

from monitor import keys
from monitor.cluster.leases import LeaseStore
from monitor.live.alerts import AlertEvent
from monitor.live.sinks import RedisSink
from monitor.live.sinks.base import Item, PartlyWritten, SinkUnavailable
from monitor.redis_conn import AsyncClusterRedis, Durability, async_redis_client
from monitor.redis_faults import NotReplicated

from .clusterproc import ClusterSetup
from .test_sinks import score

WAIT = Durability(replicas=1, timeout_ms=300)
"""For writes made while a replica is frozen: they must not be acknowledged. The ones
that must be are written with :data:`PATIENT` or until done (a replica just thawed on a
loaded machine may take more than 300 ms to answer)."""
PATIENT = Durability(replicas=1, timeout_ms=10_000)
IDS = ["cam-a", "cam-b", "cam-c"]


def _client(cluster: ClusterSetup) -> Any:
    client = async_redis_client(cluster.url(), decode_responses=True,
                                socket_connect_timeout=2, socket_timeout=15)
    assert isinstance(client, AsyncClusterRedis)
    return client


def _batch(seq: int, fences: dict[str, int]) -> list[Item]:
    return [it for s in IDS for it in (
        dataclasses.replace(score(s, seq), fence=fences[s]),
        AlertEvent(s, "alert_start", 0.9, 10.0 + seq, 10.0 + seq, fence=fences[s]))]


def _seqs(cluster: ClusterSetup, port: int, stream: str) -> list[str]:
    node = cluster.node(port)
    try:
        node.execute_command("READONLY")  # a replica answers reads of its primary's slots
        return [f["seq"] for _, f in node.xrange(keys.stream_scores(stream))]
    finally:
        node.close()


async def _write_until_done(sink: RedisSink, pending: list[Item], timeout_s: float = 60) -> None:
    """Write ``pending`` again until done, as BufferedSink does: only the unwritten items
    of each try (bounded)."""
    deadline = time.monotonic() + timeout_s
    while pending:
        try:
            await sink.write(pending)
            return
        except PartlyWritten as exc:
            assert time.monotonic() < deadline, exc
            pending = list(exc.unwritten)
            await asyncio.sleep(0.2)


async def test_a_node_whose_replica_did_not_acknowledge_is_written_again_once(
    redis_cluster: ClusterSetup,
) -> None:
    owners = {s: redis_cluster.port_of_slot_owner(keys.stream_lease(s)) for s in IDS}
    assert len(set(owners.values())) > 1
    client = _client(redis_cluster)
    sink = RedisSink(client, owner="a", durability=WAIT)
    store = LeaseStore(client, "a", 60, PATIENT)
    try:
        fences = {s: await store.acquire(s) for s in IDS}
        assert set(fences.values()) == {1}
        await _write_until_done(sink, _batch(1, fences))  # every node acknowledged
        for s in IDS:
            assert _seqs(redis_cluster, redis_cluster.replica_of(owners[s]), s) == ["1"]
        frozen_primary = owners["cam-a"]
        replica = redis_cluster.replica_of(frozen_primary)
        on_it = {s for s in IDS if owners[s] == frozen_primary}
        redis_cluster.freeze(replica)
        try:
            with pytest.raises(PartlyWritten) as caught:
                await sink.write(_batch(2, fences))
        finally:
            redis_cluster.thaw(replica)
        # exactly the frozen replica's node's calls are not done, as NOTREPLICATED
        assert {it.stream_id for it in caught.value.unwritten} == on_it
        assert isinstance(caught.value.cause.__cause__, NotReplicated)
        for s in set(IDS) - on_it:  # the other nodes' calls are done and replicated
            assert _seqs(redis_cluster, redis_cluster.replica_of(owners[s]), s) == ["1", "2"]
        assert _seqs(redis_cluster, frozen_primary, "cam-a") == ["1", "2"]  # primary only
        await _write_until_done(sink, list(caught.value.unwritten))  # each once, below
        for s in IDS:  # each score once, on the primary and its replica
            assert _seqs(redis_cluster, owners[s], s) == ["1", "2"]
            assert _seqs(redis_cluster, redis_cluster.replica_of(owners[s]), s) == ["1", "2"]
        copies = [f["stream"] for _, f in await client.xrange(keys.EVENTS)]
        assert sorted(copies) == sorted(IDS * 2)  # copied once written and acknowledged
        for s in on_it:  # an event is not fenced by seq: the retry stored it again
            assert await client.xlen(keys.stream_events(s)) == 3
    finally:
        await client.aclose()


async def test_a_lease_grant_not_acknowledged_on_a_cluster_is_not_taken(
    redis_cluster: ClusterSetup,
) -> None:
    client = _client(redis_cluster)
    store = LeaseStore(client, "r1", 10.0, WAIT)
    try:
        primary = redis_cluster.port_of_slot_owner(keys.stream_lease("cam2"))
        replica = redis_cluster.replica_of(primary)
        assert await LeaseStore(client, "r1", 10.0, PATIENT).acquire("cam") == 1
        redis_cluster.freeze(replica)
        try:
            assert await store.acquire("cam2") is None  # granted on the primary alone
        finally:
            redis_cluster.thaw(replica)
        assert await client.get(keys.stream_lease("cam2")) is None  # released again
        assert await client.get(keys.stream_fence("cam2")) == "1"  # the token is skipped
        assert await LeaseStore(client, "r1", 10.0, PATIENT).acquire("cam2") == 2
        node = redis_cluster.node(replica)
        node.execute_command("READONLY")
        try:
            deadline = time.monotonic() + 10
            while node.get(keys.stream_lease("cam2")) is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert node.get(keys.stream_lease("cam2")) == "r1 2"
        finally:
            node.close()
    finally:
        await client.aclose()


async def test_the_sink_reaches_the_promoted_replica_after_a_primary_dies(
    redis_cluster: ClusterSetup,
) -> None:
    client = _client(redis_cluster)
    sink = RedisSink(client, owner="a", durability=PATIENT)
    store = LeaseStore(client, "a", 60, PATIENT)
    try:
        fences = {s: await store.acquire(s) for s in IDS}
        await sink.write(_batch(1, fences))
        victim = redis_cluster.port_of_slot_owner(keys.stream_lease("cam-a"))
        redis_cluster.kill(victim)
        with pytest.raises(PartlyWritten) as caught:  # its slot map still names the victim
            await sink.write(_batch(2, fences))
        assert "ConnectionError" in str(caught.value.cause)
        pending: list[Item] = list(caught.value.unwritten)
        # the promoted replica has no replica of its own (WAIT 1 cannot be met) until
        # the victim is back as its replica
        await asyncio.to_thread(redis_cluster.wait_promoted, victim)
        await asyncio.to_thread(redis_cluster.bring_back, victim)
        await _write_until_done(sink, pending)
        for s in IDS:  # replicated before the kill, then written to the promoted replica
            port = redis_cluster.port_of_slot_owner(keys.stream_lease(s))
            assert port != victim
            assert _seqs(redis_cluster, port, s) == ["1", "2"]
    finally:
        await client.aclose()


async def test_a_frozen_primary_released_after_its_replica_took_over_is_not_written_to(
    redis_cluster: ClusterSetup,
) -> None:
    """SIGSTOP a primary until its replica is promoted, then SIGCONT it, and write at once
    through clients whose slot map still names it: a score batch and a lease grant sent
    there are not done (the node answers ``MOVED``, or takes them as a deposed primary
    without a replica to acknowledge them); then they are done on the promoted replica,
    the old primary rejoins as its replica, and every score is stored once, by its one
    owner."""
    client = _client(redis_cluster)
    other = _client(redis_cluster)  # a second replica's client: "b" takes a lease there
    sink = RedisSink(client, owner="a", durability=WAIT)
    store = LeaseStore(client, "a", 60, PATIENT)
    b = LeaseStore(other, "b", 60, WAIT)
    try:
        fences = {s: await store.acquire(s) for s in IDS}
        await _write_until_done(sink, _batch(1, fences))
        await other.get(keys.stream_lease("cam-x2"))  # its slot map read now
        victim = redis_cluster.port_of_slot_owner(keys.stream_lease("cam-a"))
        promoted = redis_cluster.replica_of(victim)
        assert redis_cluster.port_of_slot_owner(keys.stream_lease("cam-x2")) == victim, (
            "cam-x2 must share cam-a's node")
        redis_cluster.freeze(victim)
        try:
            await asyncio.to_thread(redis_cluster.wait_promoted, victim)
        finally:
            redis_cluster.thaw(victim)
        with pytest.raises(PartlyWritten) as caught:  # the old primary, at once
            await sink.write(_batch(2, fences))
        assert {it.stream_id for it in caught.value.unwritten} >= {"cam-a"}
        assert isinstance(caught.value.cause, SinkUnavailable), caught.value.cause  # outage
        try:
            assert await b.acquire("cam-x2") is None  # not acknowledged: not taken
        except Exception as exc:  # or MOVED: the old primary knew already
            assert "MOVED" in repr(exc) or "Moved" in type(exc).__name__, exc
        await asyncio.to_thread(redis_cluster.wait_role, victim, "slave")
        pending: list[Item] = list(caught.value.unwritten)
        await _write_until_done(sink, pending)
        token = await LeaseStore(other, "b", 60, PATIENT).acquire("cam-x2")
        assert token is not None and token >= 1
        for s in IDS:
            port = redis_cluster.port_of_slot_owner(keys.stream_lease(s))
            assert _seqs(redis_cluster, port, s) == ["1", "2"]
        assert redis_cluster.port_of_slot_owner(keys.stream_lease("cam-a")) == promoted
        node = redis_cluster.node(promoted)
        try:
            owners = {f["owner"] for _, f in node.xrange(keys.stream_scores("cam-a"))}
            assert owners == {"a"}
        finally:
            node.close()
    finally:
        await client.aclose()
        await other.aclose()
