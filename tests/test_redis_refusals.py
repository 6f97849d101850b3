"""A Redis that answers but refuses writes is an outage: buffer, not ready, retry, flush.

Real redis-servers put in each refusing state by real commands: too few
replicas (``min-replicas-to-write 1``: ``NOREPLICAS``), ``maxmemory`` under
``noeviction`` (``OOM``), a failed BGSAVE with ``stop-writes-on-bgsave-error``
(``MISCONF``), a script running past ``busy-reply-threshold`` (``BUSY``), and a
read-only replica (``READONLY``) that is then promoted. Inside MULTI/EXEC
redis-py reports most of these as a ``ResponseError`` whose message is
rewritten ("Command # 1 (XADD …) of pipeline caused error: ('NOREPLICAS …',)").
Before the fix such an error killed the sink's writer task: /readyz stayed
ready and nothing was written after Redis recovered.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from redis.exceptions import ResponseError

from monitor import keys
from monitor.live.sinks import RedisSink
from monitor.live.sinks.base import sink_ready_check
from monitor.live.sinks.fenced import FENCED_SCORES, FencedWriter
from monitor.metrics import StreamMetrics
from monitor.redis_faults import redis_unavailable, refusal_code, write_refused

from .redisproc import RedisProcess
from .test_sinks import score


async def poll(cond: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def wait_until(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def seqs(url: str, stream: str) -> list[int]:
    r = redis.Redis.from_url(url, decode_responses=True)
    return [int(e[1]["seq"]) for e in r.xrange(keys.stream_scores(stream))]


Action = Callable[[], object]


@dataclass
class Refusal:
    """A real redis-server and the commands that make it refuse writes, then accept them."""

    code: str
    rp: RedisProcess
    refuse: Action
    accept: Action


def busy_script(rp: RedisProcess, admin: redis.Redis) -> tuple[Action, Action]:
    """A Lua loop keeps Redis busy (``BUSY`` to everyone else) until SCRIPT KILL."""
    admin.config_set("busy-reply-threshold", 10)  # ms
    runner: list[threading.Thread] = []

    def loop() -> None:
        # no socket timeout: the script's reply comes only when it is killed
        with (redis.Redis.from_url(rp.url, socket_timeout=None) as r,
              pytest.raises(ResponseError, match="killed")):
            r.eval("while true do end", 0)

    def busy() -> bool:
        try:
            admin.ping()
        except ResponseError as exc:
            return str(exc).startswith("BUSY")
        return False

    def refuse() -> None:
        runner.append(threading.Thread(target=loop, daemon=True))
        runner[-1].start()
        wait_until(busy, 10, "the script to make Redis busy")

    def accept() -> None:
        admin.script_kill()
        runner[-1].join(10)

    return refuse, accept


def failed_snapshot(data: Path, admin: redis.Redis) -> tuple[Action, Action]:
    """A BGSAVE that fails (its directory is gone) with ``stop-writes-on-bgsave-error yes``
    (the default); lifted by no longer asking for snapshots."""

    def refuse() -> None:
        admin.config_set("save", "3600 1")
        data.rmdir()
        admin.bgsave()
        wait_until(lambda: admin.info("persistence")["rdb_last_bgsave_status"] == "err", 10,
                   "the BGSAVE to fail")

    return refuse, lambda: admin.config_set("save", "")


@pytest.fixture(params=["NOREPLICAS", "OOM", "MISCONF", "BUSY"])
def refusal(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Refusal]:
    data = tmp_path / "data"
    data.mkdir()
    rp = RedisProcess(data)
    rp.start()
    admin = redis.Redis.from_url(rp.url)
    admin.config_set("maxmemory-policy", "noeviction")
    cases: dict[str, tuple[Action, Action]] = {
        "NOREPLICAS": (lambda: admin.config_set("min-replicas-to-write", 1),
                       lambda: admin.config_set("min-replicas-to-write", 0)),
        "OOM": (lambda: admin.config_set("maxmemory", 1),
                lambda: admin.config_set("maxmemory", 0)),
        "MISCONF": failed_snapshot(data, admin),
        "BUSY": busy_script(rp, admin),
    }
    try:
        yield Refusal(request.param, rp, *cases[request.param])
    finally:  # a failed test may leave Redis refusing: make it able to shut down
        with contextlib.suppress(redis.RedisError):
            admin.script_kill()
        with contextlib.suppress(redis.RedisError):
            admin.config_set("save", "")
        admin.close()
        rp.stop()


async def ride_out_refusal(
    url: str, refuse: Action, accept: Action, written_before: int, code: str,
) -> None:
    registry = CollectorRegistry()
    sink = RedisSink.from_url(url, retry_floor_s=0.05, retry_cap_s=0.2,
                              metrics=StreamMetrics(registry))
    ready = sink_ready_check(sink)
    await sink.start()
    for i in range(written_before):
        sink.publish(score("cam", i))
    assert await sink.flush(10)
    assert (await ready())[0]
    refuse()
    for i in range(written_before, written_before + 40):
        sink.publish(score("cam", i))

    async def refused() -> bool:
        return not sink.available

    await poll(refused, 10, "the sink to notice the refusal")
    ok, why = await ready()
    assert not ok and "buffered" in why and code in why, why
    assert sink.buffered == 40
    assert not await sink.flush(0.3)  # still refused: nothing written, nothing lost
    assert sink.writing, "the writer task died of the refusal"

    def writes(outcome: str) -> float:
        v = registry.get_sample_value("restrav_sink_writes_total",
                                      {"sink": "redis", "outcome": outcome})
        return v or 0.0

    assert writes("error") >= 1 and writes("failed") == 0  # an outage, not a failure
    accept()
    assert await sink.flush(10), "buffered scores were not flushed after Redis took writes"
    assert (await ready())[0]
    await sink.aclose()
    assert seqs(url, "cam") == list(range(written_before + 40))  # no gap, no duplicate


async def test_refusing_redis_buffers_then_flushes(refusal: Refusal) -> None:
    await ride_out_refusal(refusal.rp.url, refusal.refuse, refusal.accept, written_before=5,
                           code=refusal.code)


async def test_read_only_replica_buffers_until_promoted(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    master, replica = RedisProcess(tmp_path / "a"), RedisProcess(tmp_path / "b")
    master.start()
    replica.start()
    admin = redis.Redis.from_url(replica.url)
    try:
        # the sink writes to a node that is demoted to a replica, then promoted again
        await ride_out_refusal(
            replica.url,
            refuse=lambda: (admin.replicaof("127.0.0.1", master.port), master.stop()),
            accept=lambda: admin.replicaof("NO", "ONE"),
            written_before=0,
            code="READONLY",
        )
    finally:
        admin.close()
        replica.stop()
        master.stop()


async def transaction_error(url: str, fenced: bool, key: str = "x") -> Exception:
    """What redis-py raises for one write in MULTI/EXEC: a plain XADD + HSET, or a
    fenced script (as :class:`RedisSink` sends them; loaded before the refusal)."""
    client = aioredis.from_url(url)
    try:
        async with client.pipeline(transaction=True) as pipe:
            if fenced:
                FencedWriter("me").scores(pipe, "cam", 1, ["seq"], ['["1"]'], 10)
            else:
                pipe.xadd(key, {"a": "1"})
                pipe.hset(key + ":h", mapping={"a": "1"})
            await pipe.execute()
    except Exception as exc:
        return exc
    finally:
        await client.aclose()
    raise AssertionError("the transaction was not refused")


async def test_what_a_transaction_raises_is_read_as_a_refusal(refusal: Refusal) -> None:
    """The errors redis-py really raises in each state, plain commands and fenced scripts."""
    with redis.Redis.from_url(refusal.rp.url) as r:  # "me" holds the lease, token 1
        r.set(keys.stream_fence("cam"), 1)
        r.set(keys.stream_lease("cam"), "me 1")
        r.script_load(FENCED_SCORES)
    refusal.refuse()
    try:
        for fenced in (False, True):
            exc = await transaction_error(refusal.rp.url, fenced)
            assert refusal_code(exc) == refusal.code, repr(exc.args)
            assert write_refused(exc) and redis_unavailable(exc)
    finally:
        refusal.accept()


async def test_a_refused_exec_is_read_as_a_refusal(tmp_path: Path) -> None:
    """Replicas lost between MULTI and EXEC: Redis refuses the EXEC itself, and redis-py
    raises ``ExecAbortError("Transaction discarded because of: NOREPLICAS …")``."""
    rp = RedisProcess(tmp_path)
    rp.start()
    try:
        with redis.Redis.from_url(rp.url) as admin, redis.Redis.from_url(rp.url) as r:
            conn = r.connection_pool.get_connection()
            conn.send_command("MULTI")
            assert conn.read_response() == b"OK"
            conn.send_command("XADD", "x", "*", "a", "1")
            assert conn.read_response() == b"QUEUED"
            admin.config_set("min-replicas-to-write", 1)
            conn.send_command("EXEC")
            with pytest.raises(ResponseError) as caught:
                conn.read_response()
            r.connection_pool.release(conn)
        assert "discarded because of" in str(caught.value)
        assert refusal_code(caught.value) == "NOREPLICAS"
    finally:
        rp.stop()


async def test_other_errors_are_not_refusals_even_when_a_key_looks_like_a_code(
    tmp_path: Path,
) -> None:
    """``WRONGTYPE`` on keys named like refusal codes: the pipeline's message quotes the
    command (``XADD OOM * a 1``), which must not be read as the error's code."""
    rp = RedisProcess(tmp_path)
    rp.start()
    try:
        with redis.Redis.from_url(rp.url) as admin:
            for key in ("OOM", "NOREPLICAS (x) of pipeline caused error: ('BUSY',)"):
                admin.set(key, "not a stream")
                exc = await transaction_error(rp.url, fenced=False, key=key)
                assert "WRONGTYPE" in str(exc) and key[:8] in str(exc)
                assert refusal_code(exc) is None and not redis_unavailable(exc)
    finally:
        rp.stop()
    assert not redis_unavailable(ValueError("x"))
    assert redis_unavailable(ConnectionRefusedError())


def test_a_cluster_slot_map_that_cannot_be_read_is_an_outage() -> None:
    """redis-py's sync cluster client words a slot map it could not read (nodes that
    disagree mid-failover: a worker died of it in a 16-kill chaos run) as a plain
    RedisClusterException: the cluster clients raise those as ConnectionError; a
    bug (keys of two slots) and a node without cluster mode are not outages."""
    from redis.exceptions import RedisClusterException

    from monitor.redis_cluster import _in_flux

    disagree = RedisClusterException(
        "startup_nodes could not agree on a valid slots cache: 127.0.0.1:1 vs 127.0.0.1:2 "
        "on slot: 5684")
    assert _in_flux(disagree)
    assert _in_flux(RedisClusterException("Redis Cluster cannot be connected. Please provide "
                                          "at least one reachable node: Error 111"))
    assert _in_flux(RedisClusterException("All slots are not covered after query all "
                                          "startup_nodes. 10 of 16384 covered..."))
    assert not _in_flux(RedisClusterException(
        "Redis Cluster cannot be connected. Please provide at least one reachable node: "
        "Cluster mode is not enabled on this node"))
    assert not _in_flux(RedisClusterException("Keys in request don't hash to the same slot"))
