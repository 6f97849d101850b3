"""The desired set of live streams (:mod:`monitor.live.desired`) on a real redis-server.

The store's hash and its mark, the keeper's write-back after a data loss and its marking
of a set never seen marked, the stored form of a spec (no credentials), and the writer
that never fails its caller and rewrites the whole set once Redis is back (a real outage:
the server is stopped and started again). The clock of the writer's backoff is the only
fake. The multi-replica behaviour is in test_cluster.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from monitor import keys
from monitor.config import StreamSpec
from monitor.live import desired
from monitor.live.desired import (
    DesiredSetKeeper,
    DesiredSetWriter,
    RedisDesiredStore,
    record_for,
    spec_from_record,
)

from .redisproc import RedisProcess
from .test_cluster import poll

MARK = keys.STREAMS_DESIRED_MARK


@pytest.fixture
async def aclient(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.from_url(redis_url)
    yield c
    await c.aclose()


def rec(stream_id: str, paused: bool = False) -> dict[str, Any]:
    return {"id": stream_id, "url": f"rtsp://cam/{stream_id}", "paused": paused}


async def raw(aclient: aioredis.Redis) -> dict[str, bytes]:
    return {k.decode(): v for k, v in (await aclient.hgetall(keys.STREAMS_DESIRED)).items()}


async def test_the_store_keeps_one_canonical_json_per_stream_and_hides_the_mark(
    aclient: aioredis.Redis, redis_url: str
) -> None:
    store = RedisDesiredStore(aclient)
    assert store.key == keys.STREAMS_DESIRED
    assert await store.load() == [] and await store.load_marked() == ({}, False)
    await store.put("b", {"url": "rtsp://cam/b", "id": "b", "paused": True})
    await store.put("a", rec("a"))
    # canonical JSON: two replicas writing the same record write the same bytes
    assert (await raw(aclient))["b"] == b'{"id": "b", "paused": true, "url": "rtsp://cam/b"}'
    await store.mark()
    assert (await raw(aclient))[MARK] == b"1"
    assert sorted(await store.load(), key=lambda r: str(r["id"])) == [
        rec("a"), {"id": "b", "url": "rtsp://cam/b", "paused": True}]
    assert await store.load_marked() == ({"a": rec("a"), "b": {
        "id": "b", "url": "rtsp://cam/b", "paused": True}}, True)
    await store.delete("a")
    await store.put("b", rec("b"))  # a put replaces
    await store.put("c", rec("c"))  # a field after the mark is read too
    assert await store.load_marked() == ({"b": rec("b"), "c": rec("c")}, True)
    await store.delete("c")

    # a client that decodes answers (str fields) reads the same
    text = aioredis.from_url(redis_url, decode_responses=True)
    try:
        assert await RedisDesiredStore(text).load_marked() == ({"b": rec("b")}, True)
    finally:
        await text.aclose()
    # another key is another set
    other = RedisDesiredStore(aclient, "elsewhere")
    await other.put("x", rec("x"))
    assert await other.load_marked() == ({"x": rec("x")}, False)
    assert await store.load_marked() == ({"b": rec("b")}, True)


async def test_unreadable_entries_are_skipped_with_a_warning(
    aclient: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisDesiredStore(aclient)
    await store.put("good", rec("good"))
    await aclient.hset(keys.STREAMS_DESIRED, mapping={"broken": "{not json", "list": "[1, 2]"})
    await store.put("after", rec("after"))  # what follows a bad entry is still read
    with caplog.at_level(logging.WARNING, logger="restrav.streams"):
        assert await store.load_marked() == ({"good": rec("good"), "after": rec("after")}, False)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == ["desired set: unreadable entry b'broken' skipped"]


async def test_write_back_adds_only_what_is_missing_and_sets_the_mark(
    aclient: aioredis.Redis,
) -> None:
    store = RedisDesiredStore(aclient)
    await store.put("edited", rec("edited", paused=True))  # an edit made since the loss
    written = await store.write_back({"edited": rec("edited"), "gone": rec("gone"),
                                      "also": rec("also")})
    assert written == 2
    assert await store.load_marked() == (
        {"edited": rec("edited", paused=True), "gone": rec("gone"), "also": rec("also")}, True)
    assert (await raw(aclient))["gone"] == json.dumps(rec("gone"), sort_keys=True).encode()
    # a second replica writing back the same set at once writes nothing and agrees
    assert await store.write_back({"gone": rec("gone", paused=True)}) == 0
    assert (await store.load_marked())[0]["gone"] == rec("gone")
    assert await store.write_back({}) == 0


async def test_the_keeper_marks_a_set_only_after_two_unmarked_reads(
    aclient: aioredis.Redis,
) -> None:
    store = RedisDesiredStore(aclient)
    restored: list[int] = []
    keeper = DesiredSetKeeper(store, lambda: restored.append(1))
    # nothing stored: never marked (an empty hash is no set to keep)
    assert await keeper.load() == {} and await keeper.load() == {} and await keeper.load() == {}
    assert MARK not in await raw(aclient)
    # a set never seen marked (a first start): two reads in a row, then the mark
    await store.put("cam", rec("cam"))
    keeper = DesiredSetKeeper(store, lambda: restored.append(1))
    assert await keeper.load() == {"cam": rec("cam")}
    assert MARK not in await raw(aclient)
    assert await keeper.load() == {"cam": rec("cam")}
    assert (await raw(aclient))[MARK] == b"1"
    assert restored == []
    # from now on the set is known: losing it writes it back
    await aclient.flushall()
    assert await keeper.load() == {"cam": rec("cam")}
    assert restored == [1] and (await raw(aclient))[MARK] == b"1"


async def test_the_unmarked_count_restarts_when_the_set_is_seen_marked(
    aclient: aioredis.Redis,
) -> None:
    store = RedisDesiredStore(aclient)
    keeper = DesiredSetKeeper(store)  # no callback: a write-back still happens
    await store.put("cam", rec("cam"))
    await keeper.load()  # one unmarked read
    await store.mark()
    await keeper.load()  # seen marked: known, the count restarts
    await aclient.hdel(keys.STREAMS_DESIRED, MARK)
    assert await keeper.load() == {"cam": rec("cam")}  # written back (it was known)
    assert (await raw(aclient))[MARK] == b"1"


async def test_a_second_keeper_that_never_saw_the_set_does_not_mark_it_at_once(
    aclient: aioredis.Redis,
) -> None:
    """A replica that starts while the set is unmarked leaves one read's time to a
    replica that knew the set, and then marks what is there."""
    store = RedisDesiredStore(aclient)
    knew = DesiredSetKeeper(store)
    await store.put("cam", rec("cam"))
    await store.put("api", rec("api"))
    await store.mark()
    assert set(await knew.load()) == {"cam", "api"}
    await aclient.flushall()
    await store.put("new", rec("new"))  # an edit after the loss
    fresh = DesiredSetKeeper(store)
    assert await fresh.load() == {"new": rec("new")}
    assert MARK not in await raw(aclient)
    assert set(await knew.load()) == {"cam", "api", "new"}  # the replica that knew it
    assert set(await fresh.load()) == {"cam", "api", "new"}


async def test_the_keeper_logs_the_write_back_as_an_error(
    aclient: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    store = RedisDesiredStore(aclient)
    keeper = DesiredSetKeeper(store)
    await store.put("a", rec("a"))
    await store.put("b", rec("b"))
    await store.mark()
    await keeper.load()
    await aclient.hdel(keys.STREAMS_DESIRED, MARK, "b")
    with caplog.at_level(logging.ERROR, logger="restrav.streams"):
        assert set(await keeper.load()) == {"a", "b"}
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
        "the desired set lost its mark in Redis (Redis lost its data?): wrote back the 2 "
        "streams this replica last knew (1 were missing)"]


async def test_remember_and_forget_change_only_a_known_set(aclient: aioredis.Redis) -> None:
    store = RedisDesiredStore(aclient)
    keeper = DesiredSetKeeper(store)
    keeper.remember("early", rec("early"))  # nothing known yet: not kept
    keeper.forget("early")
    await store.put("cam", rec("cam"))
    await store.mark()
    await keeper.load()
    keeper.remember("new", rec("new"))
    keeper.forget("cam")
    keeper.forget("never-there")
    await aclient.flushall()
    assert await keeper.load() == {"new": rec("new")}


def test_the_stored_form_has_no_credentials_and_says_they_were_there() -> None:
    spec = StreamSpec(id="cam", url="rtsp://user:pw@10.0.0.5:554/live?x=1", hop=3)
    stored = record_for(spec)
    assert stored == {**spec.model_dump(), "url": "rtsp://10.0.0.5:554/live?x=1",
                      "inline_credentials": True}
    assert "pw" not in json.dumps(stored)
    back, lost = spec_from_record(stored)
    assert lost is True and back == spec.model_copy(update={"url": stored["url"]})
    assert "inline_credentials" in stored  # the caller's record is not changed

    plain = StreamSpec(id="cam2", url="rtsp://10.0.0.5/live", paused=True)
    assert record_for(plain) == plain.model_dump()
    assert spec_from_record(record_for(plain)) == (plain, False)
    with pytest.raises(ValueError):
        spec_from_record({"id": "bad id", "url": "rtsp://x"})


class Clock:
    """The writer's backoff sleeps, recorded and not waited: the only fake, seen by
    :mod:`monitor.live.desired` alone (redis-py's own retries keep the real clock)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sleeps: list[float] = []
        clock = self

        class Asyncio:
            def __getattr__(self, name: str) -> Any:
                return getattr(asyncio, name)

            @staticmethod
            async def sleep(delay: float) -> None:
                clock.sleeps.append(delay)
                await asyncio.sleep(0.01)

        monkeypatch.setattr(desired, "asyncio", Asyncio())

    async def until_sleeps(self, n: int, timeout_s: float = 60) -> None:
        """Until the writer has slept ``n`` times."""

        async def slept() -> bool:
            return len(self.sleeps) >= n

        await poll(slept, f"{n} backoff sleeps", timeout_s)


async def test_the_writer_never_fails_and_rewrites_the_whole_set_after_an_outage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisProcess(tmp_path, appendonly=True)  # the set survives the outage
    server.start()
    c = aioredis.from_url(server.url)
    try:
        store = RedisDesiredStore(c)
        specs = {s.id: s for s in (StreamSpec(id="a", url="rtsp://u:p@cam/a"),
                                   StreamSpec(id="b", url="rtsp://cam/b"))}
        writer = DesiredSetWriter(store, True, lambda: dict(specs))
        for s in specs.values():
            await writer.put(s)
        await store.put("stale", rec("stale"))  # to be removed by a resync
        assert set((await store.load_marked())[0]) == {"a", "b", "stale"}
        assert (await store.load_marked())[0]["a"] == record_for(specs["a"])

        clock = Clock(monkeypatch)
        server.stop()
        with caplog.at_level(logging.INFO, logger="restrav.streams"):
            specs["c"] = StreamSpec(id="c", url="rtsp://cam/c", paused=True)
            await writer.put(specs["c"])  # does not raise
            del specs["b"]
            await writer.delete("b")  # does not raise either
            await clock.until_sleeps(7)  # retrying with backoff while Redis is down
            assert clock.sleeps[:7] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
            server.start()

            async def resynced() -> bool:
                return set((await store.load_marked())[0]) == {"a", "c"}

            await poll(resynced, "the whole set rewritten")
            await poll(lambda: done(writer), "the resync to end")
        assert (await store.load_marked())[0] == {
            "a": record_for(specs["a"]), "c": record_for(specs["c"])}
        messages = [r.getMessage() for r in caplog.records]
        assert messages.count("desired set not saved (ConnectionError); will retry") == 2
        assert messages.count("desired set saved") == 1
        # Redis is back: writes go straight through, no resync started
        await writer.put(StreamSpec(id="d", url="rtsp://cam/d"))
        await writer.delete("a")
        assert set((await store.load_marked())[0]) == {"c", "d"}
        await writer.aclose()
    finally:
        await c.aclose()
        server.stop()


async def done(writer: DesiredSetWriter) -> bool:
    task = writer._sync_task  # the resync's end is the state waited for
    return task is not None and task.done()


async def test_one_resync_at_a_time_and_aclose_stops_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = RedisProcess(tmp_path)  # never started: every write fails
    c = aioredis.from_url(server.url)
    try:
        clock = Clock(monkeypatch)
        specs = {"a": StreamSpec(id="a", url="rtsp://cam/a")}
        writer = DesiredSetWriter(RedisDesiredStore(c), True, lambda: dict(specs))
        await writer.put(specs["a"])
        first = writer._sync_task
        await writer.delete("a")
        await writer.put(specs["a"])
        assert writer._sync_task is first and first is not None
        await clock.until_sleeps(2)
        assert clock.sleeps[:2] == [0.5, 1.0]  # one loop, not three
        await writer.aclose()
        assert first.cancelled()
        await writer.aclose()  # twice is harmless
    finally:
        await c.aclose()


async def test_a_disabled_writer_or_one_without_a_store_writes_nothing(
    aclient: aioredis.Redis,
) -> None:
    store = RedisDesiredStore(aclient)
    spec = StreamSpec(id="a", url="rtsp://cam/a")
    kept = StreamSpec(id="kept", url="rtsp://cam/kept")
    await store.put("kept", record_for(kept))
    off = DesiredSetWriter(store, False, dict)
    assert off.enabled is False
    await off.put(spec)
    await off.delete("kept")
    await off.aclose()  # no resync to stop
    none = DesiredSetWriter(None, True, dict)
    assert none.enabled is False
    await none.put(spec)
    await none.delete("kept")
    assert await store.load_marked() == ({"kept": record_for(kept)}, False)
    await store.delete("kept")
    on = DesiredSetWriter(store, True, dict)
    assert on.enabled is True
    await on.put(spec)
    assert await store.load_marked() == ({"a": record_for(spec)}, False)
    await on.delete("a")
    assert await raw(aclient) == {}
