"""Writes that must survive a failover wait for a replica (``redis.wait_replicas``):
a real primary and a real replica on loopback; the replica is frozen (SIGSTOP) to
make it miss its acknowledgement. A job enqueued, a lease grant, a job's answer and a
batch of serve's scores that the replica did not acknowledge count as not done:
enqueue raises NotReplicated, the lease is not taken, the answer is retried and
written once, the score batch stays buffered and, written again, stores each score
once."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from monitor import keys
from monitor.cluster.leases import LeaseStore
from monitor.config import QueueSettings, load_settings
from monitor.core.embed import Embedder
from monitor.live.sinks.base import SinkUnavailable
from monitor.live.sinks.fenced import FencedWriter
from monitor.live.sinks.redis import RedisSink
from monitor.media.decode import DecodeLimits
from monitor.media.safe_input import OpenedFile
from monitor.metrics import QueueMetrics
from monitor.queue import ClipScorer, Job, JobOptions, Worker, connect, enqueue, ensure_group
from monitor.redis_conn import Durability, async_redis_client
from monitor.redis_faults import NotReplicated, redis_unavailable

from .media import write_clip
from .queue_helpers import FAST_QUEUE, in_thread, sample, wait_for
from .sentinelproc import SentinelSetup, started
from .test_sinks import score

WAIT = Durability(replicas=1, timeout_ms=300)
"""For writes made while the replica is frozen: they must not be acknowledged."""
PATIENT = Durability(replicas=1, timeout_ms=10_000)
"""For writes that must be acknowledged (WAIT returns at once when they are)."""
PATIENT_S = 15.0
"""A socket timeout above :data:`PATIENT`'s wait."""


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[SentinelSetup]:
    """A primary and one replica, no sentinels."""
    with started(SentinelSetup(tmp_path / "pair", replicas=1, sentinels=0)) as setup:
        yield setup


def urls(pair: SentinelSetup) -> tuple[str, int]:
    primary, replica = pair.node_ports
    return f"redis://127.0.0.1:{primary}/0", replica


def test_settings_turn_durability_on() -> None:
    assert load_settings(None).redis.durability() == Durability(0, 1000)
    assert not Durability().enabled
    d = load_settings(None, redis={"wait_replicas": 2, "wait_timeout_s": 0.25}).redis.durability()
    assert d == Durability(2, 250) and d.enabled
    assert redis_unavailable(NotReplicated("x"))  # every writer retries it like an outage


def test_a_job_the_replica_did_not_acknowledge_is_not_enqueued(pair: SentinelSetup) -> None:
    url, replica_port = urls(pair)
    client = connect(url)
    replica = pair.node(replica_port)
    try:
        job = Job(job_id="d1", source="/x.mp4")
        entry_id = enqueue(client, job, QueueSettings(), WAIT)
        assert [e for e, _ in replica.xrange(keys.JOBS)] == [entry_id]  # on the replica
        pair.freeze(replica_port)
        with pytest.raises(NotReplicated):
            enqueue(client, Job(job_id="d2", source="/x.mp4"), QueueSettings(), WAIT)
        pair.thaw(replica_port)
        # off (one Redis): no WAIT, nothing raised while the replica is frozen
        pair.freeze(replica_port)
        enqueue(client, Job(job_id="d3", source="/x.mp4"), QueueSettings())
        pair.thaw(replica_port)
    finally:
        client.close()
        replica.close()


def test_a_lease_grant_the_replica_did_not_acknowledge_is_not_taken(
    pair: SentinelSetup,
) -> None:
    url, replica_port = urls(pair)

    async def run() -> None:
        client = async_redis_client(url, socket_connect_timeout=2, socket_timeout=PATIENT_S)
        try:
            # the grants that must be acknowledged wait long (WAIT returns at the
            # acknowledgement): a replica just thawed on a loaded machine may take more
            # than WAIT's 300 ms to answer: the likely cause of its one failure under load
            patient = LeaseStore(client, "r1", 10.0, PATIENT)
            store = LeaseStore(client, "r1", 10.0, WAIT)
            assert await patient.acquire("cam") == 1
            pair.freeze(replica_port)
            assert await store.acquire("cam2") is None  # granted on the primary, not replicated
            assert await client.get(keys.stream_lease("cam2")) is None  # released again
            assert await client.get(keys.stream_fence("cam2")) == b"1"  # the token is skipped
            pair.thaw(replica_port)
            assert await patient.acquire("cam2") == 2
            assert await client.get(keys.stream_lease("cam2")) == b"r1 2"
        finally:
            await client.aclose()

    asyncio.run(run())
    replica = pair.node(replica_port)
    try:
        assert replica.get(keys.stream_lease("cam")) == "r1 1"
        assert replica.get(keys.stream_lease("cam2")) == "r1 2"
    finally:
        replica.close()


@pytest.fixture
def scorer(tiny_embedder: Embedder) -> ClipScorer:
    return ClipScorer(tiny_embedder, None, DecodeLimits(max_pixels=10_000))


def test_an_answer_the_replica_did_not_acknowledge_is_retried_and_written_once(
    pair: SentinelSetup, scorer: ClipScorer, tmp_path: Path
) -> None:
    url, replica_port = urls(pair)
    client = connect(url)
    clip = tmp_path / "a.mp4"
    write_clip(clip, fps=30, n_frames=60)
    ensure_group(client, "workers")
    enqueue(client, Job(job_id="ans", source=str(clip), options=JobOptions(hop=12),
                        reply_to="restrav:replies:ans"), QueueSettings())

    def then_the_replica_freezes(path: OpenedFile, options: JobOptions, shown: str) -> Any:
        out = scorer(path, options, shown)
        pair.freeze(replica_port)
        return out

    worker = Worker(client, QueueSettings(**FAST_QUEUE), then_the_replica_freezes,
                    QueueMetrics(CollectorRegistry()), name="w", durability=WAIT)
    (entry,) = worker.fetcher.fetch(1, block=False)
    thread, failed = in_thread(lambda: worker.process(entry))
    try:
        wait_for(lambda: sample(worker.metrics, "restrav_queue_redis_errors_total") >= 2
                 or not thread.is_alive(), 60, "answers not acknowledged")
        # written on the primary, but not done: no answer is counted yet
        assert client.exists(keys.result_key("ans"))
        assert sample(worker.metrics, "restrav_queue_jobs_total", outcome="scored") == 0
    finally:
        pair.thaw(replica_port)
    thread.join(60)
    assert not thread.is_alive() and not failed, failed
    assert sample(worker.metrics, "restrav_queue_jobs_total", outcome="scored") == 1
    assert sample(worker.metrics, "restrav_queue_late_answers_total") == 0
    replica = pair.node(replica_port)
    try:
        for c in (client, replica):  # one result, one note, one reply, acknowledged: everywhere
            assert c.exists(keys.result_key("ans"))
            assert [f["job_id"] for _, f in c.xrange(keys.RESULTS)] == ["ans"]
            assert c.xlen("restrav:replies:ans") == 1
            assert c.xpending(keys.JOBS, "workers")["pending"] == 0
    finally:
        replica.close()
        client.close()


def test_a_score_batch_the_replica_did_not_acknowledge_is_written_again_once(
    pair: SentinelSetup,
) -> None:
    url, replica_port = urls(pair)

    async def run() -> None:
        client = async_redis_client(url, socket_connect_timeout=2, socket_timeout=PATIENT_S)
        sink = RedisSink(client, owner="a", durability=WAIT)
        patient = RedisSink(client, owner="a", durability=PATIENT)  # the same owner
        try:
            token = await LeaseStore(client, "a", 60.0, PATIENT).acquire("cam")
            assert token == 1
            batch = [dataclasses.replace(score("cam", i), fence=token) for i in range(3)]
            pair.freeze(replica_port)
            try:
                with pytest.raises(SinkUnavailable, match="NOTREPLICATED"):
                    await sink.write(batch)
            finally:
                pair.thaw(replica_port)
            assert await client.xlen(keys.stream_scores("cam")) == 3  # on the primary alone
            await patient.write(batch)  # the retry of the buffered batch: acknowledged
            await patient.write([dataclasses.replace(score("cam", 3), fence=token)])
            seqs = [int(f[b"seq"]) for _, f in await client.xrange(keys.stream_scores("cam"))]
            assert seqs == [0, 1, 2, 3]  # each once, in order
            stale = RedisSink(client, owner="b", durability=PATIENT)
            await stale.write([dataclasses.replace(score("cam", 4), fence=token)])
            assert stale.refused == 1 and sink.refused == patient.refused == 0
            replica = pair.node(replica_port)
            assert replica.xlen(keys.stream_scores("cam")) == 4
            replica.close()
        finally:
            await client.aclose()

    asyncio.run(run())


async def _retrying(make: Any, timeout_s: float = 30.0) -> Any:
    """Await ``make()`` until it stops failing like a failover does (bounded)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await make()
        except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def _fenced_score(client: Any, owner: str, stream: str, token: int) -> int:
    """One fenced score write (1 written, 0 refused)."""
    writer = FencedWriter(owner)
    await writer.load(client)
    async with client.pipeline(transaction=True) as pipe:
        writer.scores(pipe, stream, token, ["seq"], ['["0"]'], 100)
        (res,) = await pipe.execute()
    return int(res)


def test_fencing_across_a_failover_that_loses_a_grant(tmp_path: Path) -> None:
    """A promoted replica lacks what it had not received. With WAIT a grant is held
    only once the replica has it, so it survives the failover; a grant taken without
    WAIT can vanish with the old primary and its fencing counter starts over, yet the
    former owner stays fenced (the lease names the holder), and the new owner writes."""
    with started(SentinelSetup(tmp_path / "s", replicas=1, sentinels=3)) as setup:

        async def run() -> None:
            client = async_redis_client(setup.url(), socket_connect_timeout=1, socket_timeout=1)
            try:
                durable = LeaseStore(client, "b", 60.0, WAIT)
                plain = LeaseStore(client, "b", 60.0)
                assert await durable.acquire("kept") == 1
                old = setup.primary_port()
                (replica,) = [p for p in setup.node_ports if p != old]
                setup.freeze(replica)
                # and cut its link: what the primary takes from now on never reaches it
                # (a frozen replica would still read what its socket had buffered)
                direct = setup.node(old or 0)
                assert direct.client_kill_filter(_type="replica") == 1
                direct.close()
                assert await durable.acquire("cam") is None  # not acknowledged: not taken
                assert await plain.acquire("lost") == 1  # on the primary alone
                assert await _fenced_score(client, "b", "lost", 1) == 1
                assert setup.kill_primary() == old
                setup.thaw(replica)
                assert setup.wait_promoted(old) == replica
                # the durable grant survived; the plain one is gone, its counter with it
                lease = await _retrying(lambda: client.get(keys.stream_lease("kept")))
                assert lease == b"b 1"
                assert await client.get(keys.stream_lease("lost")) is None
                assert await client.get(keys.stream_fence("lost")) is None
                assert await _fenced_score(client, "b", "lost", 1) == 0  # former owner fenced
                other = LeaseStore(client, "c", 60.0)
                assert await other.acquire("kept") is None  # held, as before the failover
                assert await other.acquire("lost") == 1  # the same token number again...
                assert await _fenced_score(client, "b", "lost", 1) == 0  # ...still refused
                assert await _fenced_score(client, "c", "lost", 1) == 1
            finally:
                await client.aclose()

        asyncio.run(run())
