"""Live streams over several `restrav serve` replicas (leases in a real redis-server).

Lean versions of the core properties, in the default run: every stream owned
by exactly one replica with an even load, the control API and ``GET /streams``
on any replica, failover after SIGKILL with no seq/window overlap between
owners (real processes); in process: a write refused as stale stops the stream
at once, Redis losing its data does not remove the desired set, leases stay
renewed during a drain. The long scenarios are in tests/chaos/.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import torch
from prometheus_client import CollectorRegistry

from monitor import keys
from monitor.cluster.leases import Lease, LeaseStore
from monitor.cluster.manager import ClusteredStreamManager
from monitor.config import StreamSpec, load_settings
from monitor.core.backbone import load_backbone
from monitor.core.embed import Embedder
from monitor.live.alerts import AlertEvent
from monitor.live.desired import DesiredSetKeeper, RedisDesiredStore
from monitor.live.engine import Engine
from monitor.live.sinks import RedisSink
from monitor.metrics import StreamMetrics
from monitor.redis_conn import async_redis_client

from .cluster_procs import Cluster, check_no_overlap, stream_clip, wait_for
from .clusterproc import ClusterSetup
from .redisproc import RedisProcess
from .test_sinks import score


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return stream_clip(tmp_path_factory.mktemp("cluster"))


@pytest.fixture
def cluster(tmp_path: Path, tiny_model_dir: Path) -> Iterator[Cluster]:
    rp = RedisProcess(tmp_path)
    rp.start()
    c = Cluster(tmp_path, rp.url, tiny_model_dir)
    try:
        yield c
    finally:
        c.stop_all()
        rp.stop()


def test_two_replicas_share_streams_and_fail_over_without_overlap(
    cluster: Cluster, clip: Path
) -> None:
    share_and_fail_over(cluster, clip)


def test_two_replicas_on_a_redis_cluster(
    redis_cluster: ClusterSetup, tmp_path: Path, tiny_model_dir: Path, clip: Path
) -> None:
    """The same on a real Redis Cluster (``redis+cluster://``): the streams' keys are in
    several slots on several nodes; leases, fenced scores and the API work there."""
    c = Cluster(tmp_path, redis_cluster.url(), tiny_model_dir)
    try:
        ids = share_and_fail_over(c, clip)
        nodes = {redis_cluster.port_of_slot_owner(keys.stream_lease(s)) for s in ids}
        assert len(nodes) > 1
    finally:
        c.stop_all()


def share_and_fail_over(cluster: Cluster, clip: Path) -> list[str]:
    """Two replicas share 4 streams evenly (API on either), both show every owner,
    every stream is scored; SIGKILL the owner of ``cam00``: the survivor takes its
    streams over, with no seq/window overlap between the two owners. Returns the ids."""
    names = ["r1", "r2"]
    for n in names:
        cluster.start(n)
    cluster.wait_registered(names)
    ids = cluster.add_streams(names, clip, 4)  # the control API of either replica
    wait_for(lambda: cluster.loads(ids, names) == {"r1": 2, "r2": 2}, 120, "an even split")
    code, body = cluster.api("r2", "GET", "/streams")
    assert code == 200 and [s["id"] for s in body["streams"]] == ids
    owners = cluster.owners(ids)
    wait_for(lambda: all(s["owner"] == owners[s["id"]]
                         for s in cluster.api("r1", "GET", "/streams")[1]["streams"]),
             60, "GET /streams on r1 to show every owner")
    wait_for(lambda: all(cluster.scores(s) for s in ids), 120, "a score of every stream")

    victim = owners["cam00"]
    assert victim is not None
    survivor = next(n for n in names if n != victim)
    moved = [s for s in ids if owners[s] == victim]
    cluster.signal(victim, signal.SIGKILL)
    wait_for(lambda: all(cluster.first_score_by(s, survivor) for s in moved), 120,
             f"{survivor} to score {moved}")
    assert cluster.owners(ids) == dict.fromkeys(ids, survivor)
    for s in moved:
        runs = check_no_overlap(cluster.scores(s))
        assert len(runs) == 2  # the victim's ownership, then the survivor's
    return ids


async def test_fenced_scores_and_events_on_a_redis_cluster(redis_cluster: ClusterSetup) -> None:
    """Fenced writes of streams in different slots, one batch: scores and alert events
    written while the lease is ours (events also on ``restrav:events``), refused for
    a former owner once another replica took the lease."""
    client = async_redis_client(redis_cluster.url(), decode_responses=True)
    ids = ["cam-a", "cam-b", "cam-c"]
    assert len({redis_cluster.port_of_slot_owner(keys.stream_lease(s)) for s in ids}) > 1
    a, b = LeaseStore(client, "a", 60), LeaseStore(client, "b", 60)
    sink = RedisSink(client, owner="a")
    try:
        fences = {s: await a.acquire(s) for s in ids}
        assert set(fences.values()) == {1}
        assert await a.owners(ids) == dict.fromkeys(ids, Lease("a", 1))

        def batch(seq: int) -> list[Any]:
            return [it for s in ids for it in (
                dataclasses.replace(score(s, seq), fence=1),
                AlertEvent(s, "alert_start", 0.9, 10.0 + seq, 10.0 + seq, fence=1))]

        await sink.write(batch(1))
        assert sink.refused == 0
        for s in ids:
            assert [e["seq"] for e in await entries(client, keys.stream_scores(s))] == ["1"]
            assert (await client.hget(keys.stream_latest(s), "seq")) == "1"
            assert [e["owner"] for e in await entries(client, keys.stream_events(s))] == ["a"]
        assert sorted(e["stream"] for e in await entries(client, keys.EVENTS)) == ids
        # "b" takes cam-a over (the lease of "a" expired, say): "a" is fenced there only
        await client.delete(keys.stream_lease("cam-a"))
        assert await b.acquire("cam-a") == 2
        await sink.write(batch(2))
        assert sink.refused == 2  # cam-a's score and event
        assert [e["seq"] for e in await entries(client, keys.stream_scores("cam-a"))] == ["1"]
        assert len(await entries(client, keys.stream_events("cam-a"))) == 1
        assert [e["seq"] for e in await entries(client, keys.stream_scores("cam-b"))] == [
            "1", "2"]
        assert sorted(e["stream"] for e in await entries(client, keys.EVENTS)) == sorted(
            [*ids, "cam-b", "cam-c"])
        assert len(await b.replicas()) == 0 and await a.renew({"cam-b": 1}) == {"cam-b": True}
    finally:
        await client.aclose()


async def entries(client: Any, key: str) -> list[dict[str, str]]:
    return [e for _, e in await client.xrange(key)]


@pytest.fixture(scope="module")
def embedder(tiny_model_dir: Path) -> Iterator[Embedder]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield Embedder(load_backbone(str(tiny_model_dir), "cpu", image_size=56), batch_size=8)
    finally:
        torch.set_num_threads(threads)


@contextlib.asynccontextmanager
async def replica_a(
    embedder: Embedder, redis_url: str, lease_ttl_s: float, renew_interval_s: float,
    sink_cls: type[RedisSink] = RedisSink,
) -> AsyncIterator[tuple[ClusteredStreamManager, RedisSink, aioredis.Redis, StreamMetrics]]:
    """Replica "a" in this process (engine, fenced Redis sink, clustered manager)."""
    settings = load_settings(serve={
        "engine": {"hop": 2},
        "cluster": {"enabled": True, "lease_ttl_s": lease_ttl_s,
                    "renew_interval_s": renew_interval_s},
    }).serve
    metrics = StreamMetrics(CollectorRegistry())
    engine = Engine(embedder, None, settings.engine, metrics)
    engine.start(asyncio.get_running_loop())
    client = aioredis.from_url(redis_url)
    sink = sink_cls(client, metrics=metrics, owner="a")
    await sink.start()
    mgr = ClusteredStreamManager(engine, sink, settings, metrics, client, "a")
    mgr.bind_sink(sink)
    try:
        yield mgr, sink, client, metrics
    finally:
        await mgr.stop()
        await mgr.handover()
        await engine.drain(10)
        await sink.aclose()


def file_stream(sid: str, clip: Path) -> StreamSpec:
    return StreamSpec(id=sid, url=f"file://{clip}", loop=True)


async def test_a_write_refused_as_stale_stops_the_stream_at_once(
    embedder: Embedder, redis_url: str, clip: Path
) -> None:
    async with replica_a(embedder, redis_url, 120, 60) as (mgr, sink, client, metrics):
        thief = LeaseStore(client, "b", 120)
        await mgr.restore((file_stream("cam", clip),))
        await wait_for_async(lambda: "cam" in mgr.owned, "the lease")
        status = mgr.get("cam")
        assert status is not None and status.owner == "a" and status.fence == 1
        await wait_for_async(lambda: sink.written > 0, "a first score written")
        # another replica takes the lease while "a" has not noticed (its next renewal is
        # a minute away): the very next write of "a" is refused, and the stream stops
        await client.delete(keys.stream_lease("cam"))
        assert await thief.acquire("cam") == 2
        await wait_for_async(lambda: "cam" not in mgr.owned, "the stream to stop")
        assert sink.refused >= 1
        # the sink was told: a's leftovers are refused at once, not kept for a renewal
        assert ("cam", 1) in sink._released and sink.lapse_grace_s == 120
        assert metrics.registry.get_sample_value(
            "restrav_lease_losses_total", {"reason": "refused"}) == 1.0
        assert metrics.registry.get_sample_value(
            "restrav_stale_writes_refused_total", {"stream": "cam"}) == sink.refused
        n = await client.xlen(keys.stream_scores("cam"))
        await asyncio.sleep(1.0)  # nothing more from "a": its stream task is gone
        assert await client.xlen(keys.stream_scores("cam")) == n
        assert "cam" not in mgr.owned and mgr.get("cam") is not None


class GatedRedisSink(RedisSink):
    """A real Redis sink whose writes wait while ``gate`` is clear (scores held in it on
    cue, as a slow Redis would hold them); ``held``: items of the batch waiting now."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.gate = asyncio.Event()
        self.gate.set()
        self.held = 0

    async def write(self, items: list[Any]) -> None:
        if not self.gate.is_set():
            self.held = len(items)
            await self.gate.wait()
            self.held = 0
        await super().write(items)


async def test_a_stream_given_up_has_its_buffered_scores_written_before_the_release(
    embedder: Embedder, redis_url: str, clip: Path
) -> None:
    """Scores still in the sink carry the owner's token: released first, they would be
    refused as stale and lost (seen as refusals after a rebalance under load)."""
    async with replica_a(embedder, redis_url, 120, 60, GatedRedisSink) as (
        mgr, sink, client, metrics
    ):
        assert isinstance(sink, GatedRedisSink)
        await mgr.restore((file_stream("cam", clip),))
        await wait_for_async(lambda: "cam" in mgr.owned, "the lease")
        await wait_for_async(lambda: sink.written > 0, "a first score written")
        sink.gate.clear()
        await wait_for_async(lambda: sink.held > 0, "a score held in the sink")
        # what a rebalance does (assignment.plan told this replica to release "cam")
        give_up = asyncio.create_task(mgr._give_up("cam", "rebalance"))
        await asyncio.sleep(0.5)  # the stream is stopped by now; its lease must still be held
        assert await client.exists(keys.stream_lease("cam")) == 1
        sink.gate.set()
        await asyncio.wait_for(give_up, 30)
        assert sink.refused == 0 and sink.held == 0 and not sink._buf
        assert await client.exists(keys.stream_lease("cam")) == 0  # released after
        stored = await client.xlen(keys.stream_scores("cam"))
        events = await client.xlen(keys.EVENTS)  # its state changes (running, stopped)
        assert events >= 1
        assert stored + events == sink.written  # every score of the stream, none refused
        assert metrics.registry.get_sample_value(
            "restrav_handovers_total", {"reason": "rebalance"}) == 1.0


async def test_redis_losing_its_data_does_not_remove_the_streams(
    embedder: Embedder, redis_url: str, clip: Path
) -> None:
    async with replica_a(embedder, redis_url, 5, 0.2) as (mgr, _, client, metrics):
        sample = metrics.registry.get_sample_value
        await mgr.restore((file_stream("cam", clip),))
        assert await mgr.add(file_stream("api", clip)) == "created"
        ids = {"cam", "api"}

        async def stored() -> set[str]:
            return {k.decode() for k in await client.hkeys(keys.STREAMS_DESIRED)}

        async def scoring() -> bool:
            return ids <= set(mgr.owned) and all(
                [await client.xlen(keys.stream_scores(s)) > 0 for s in ids])

        await poll(scoring, "both streams to score")
        await poll(lambda: stored_is(stored, {*ids, keys.STREAMS_DESIRED_MARK}),
                   "the replica to mark the desired set")
        await client.flushall()  # Redis restarted without its data
        await poll(lambda: stored_is(stored, {*ids, keys.STREAMS_DESIRED_MARK}),
                   "the desired set to be written back")
        await poll(scoring, "both streams to score again")
        assert sample("restrav_desired_set_restored_total") == 1.0

        # removing a stream through the API keeps the mark: it is removed for good
        assert await mgr.remove("api")
        renewed = sample("restrav_lease_renewals_total") or 0.0
        await poll(lambda: ticks_done(sample, renewed + 3), "three more ticks")
        assert await stored() == {"cam", keys.STREAMS_DESIRED_MARK}
        assert set(mgr.owned) == {"cam"} and mgr.get("api") is None
        assert (await mgr.leases.owners(["api"]))["api"] is None
        assert sample("restrav_desired_set_restored_total") == 1.0


async def test_the_keeper_writes_back_the_last_edit_it_made(redis_url: str) -> None:
    """What comes back after a data loss is what this replica last wrote (a pause),
    not the set as it was when last read."""
    client = aioredis.from_url(redis_url)
    try:
        store = RedisDesiredStore(client)
        restored: list[int] = []
        keeper = DesiredSetKeeper(store, lambda: restored.append(1))
        await store.put("cam", {"id": "cam", "paused": False})
        await store.mark()
        assert set(await keeper.load()) == {"cam"}
        await store.put("cam", {"id": "cam", "paused": True})
        keeper.remember("cam", {"id": "cam", "paused": True})
        await store.put("new", {"id": "new", "paused": False})
        keeper.remember("new", {"id": "new", "paused": False})
        await client.flushall()  # Redis restarted without its data
        records = await keeper.load()
        assert records == {"cam": {"id": "cam", "paused": True},
                           "new": {"id": "new", "paused": False}}
        assert restored == [1]
        keeper.forget("new")
        await store.delete("new")
        assert set(await keeper.load()) == {"cam"} and restored == [1]  # a removal stays
    finally:
        await client.aclose()


async def stored_is(stored: Callable[[], Awaitable[set[str]]], want: set[str]) -> bool:
    return await stored() == want


async def ticks_done(sample: Callable[[str], float | None], renewals: float) -> bool:
    return (sample("restrav_lease_renewals_total") or 0.0) >= renewals


async def test_leases_are_renewed_while_draining(
    embedder: Embedder, redis_url: str, clip: Path
) -> None:
    ttl = 2.0
    async with replica_a(embedder, redis_url, ttl, 0.2) as (mgr, sink, _, metrics):
        await mgr.restore((file_stream("cam", clip),))
        await wait_for_async(lambda: sink.written > 0, "a first score written")
        token = mgr.owned["cam"]
        await mgr.stop()
        renewed = metrics.registry.get_sample_value("restrav_lease_renewals_total") or 0.0
        await asyncio.sleep(2.5 * ttl)  # a drain longer than a lease TTL (a GPU backlog)
        assert (await mgr.leases.owners(["cam"]))["cam"] == Lease("a", token)
        assert (metrics.registry.get_sample_value("restrav_lease_renewals_total") or 0) > renewed
        assert await mgr.handover() == 1
        assert (await mgr.leases.owners(["cam"]))["cam"] is None
        assert metrics.registry.get_sample_value(
            "restrav_handovers_total", {"reason": "drain"}) == 1.0


async def poll(cond: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 60) -> None:
    """Until the async ``cond`` holds (AssertionError with ``what`` after the timeout)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def wait_for_async(cond: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)
