"""A Redis that answers but refuses writes is an outage: buffer, not ready, retry, flush.

Real redis-servers: one at ``maxmemory`` under ``noeviction`` (``OOM`` errors)
and one read-only replica (``READONLY``) that is then promoted. Before the fix
the sink's writer task died of the first refusal: nothing was flushed after
Redis recovered and the drain raised a traceback.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis
from redis.exceptions import ResponseError

from monitor import keys
from monitor.redis_faults import redis_unavailable, write_refused
from monitor.sinks import RedisSink
from monitor.sinks.base import sink_ready_check

from .redisproc import RedisProcess
from .test_sinks import score


async def poll(cond: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    import asyncio

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await cond():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def seqs(url: str, stream: str) -> list[int]:
    r = redis.Redis.from_url(url, decode_responses=True)
    return [int(e[1]["seq"]) for e in r.xrange(keys.stream_scores(stream))]


async def ride_out_refusal(
    url: str, refuse: Callable[[], None], accept: Callable[[], None], written_before: int
) -> None:
    sink = RedisSink.from_url(url, retry_floor_s=0.05, retry_cap_s=0.2)
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
    assert not ok and "buffered" in why
    assert sink.buffered == 40
    assert not await sink.flush(0.3)  # still refused: nothing written, nothing lost
    accept()
    assert await sink.flush(10), "buffered scores were not flushed after Redis took writes"
    assert (await ready())[0]
    await sink.aclose()
    assert seqs(url, "cam") == list(range(written_before + 40))  # no gap, no duplicate


async def test_oom_at_maxmemory_buffers_then_flushes(tmp_path: Path) -> None:
    rp = RedisProcess(tmp_path)
    rp.start()
    admin = redis.Redis.from_url(rp.url)
    try:
        admin.config_set("maxmemory-policy", "noeviction")
        await ride_out_refusal(
            rp.url,
            refuse=lambda: admin.config_set("maxmemory", 1),
            accept=lambda: admin.config_set("maxmemory", 0),
            written_before=5,
        )
    finally:
        admin.close()
        rp.stop()


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
        )
    finally:
        admin.close()
        replica.stop()
        master.stop()


def test_refusals_are_outages_and_other_errors_are_not() -> None:
    for text in ("BUSY Redis is busy running a script", "NOREPLICAS Not enough good replicas",
                 "MISCONF Redis is configured to save RDB snapshots"):
        assert write_refused(ResponseError(text)) and redis_unavailable(ResponseError(text))
    assert not write_refused(ResponseError("WRONGTYPE Operation against a key"))
    assert not redis_unavailable(ValueError("x"))
    assert redis_unavailable(ConnectionRefusedError())
