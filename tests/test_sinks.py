"""Sinks against a real redis-server: scores, latest hash, events, an outage and its flush."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from prometheus_client import CollectorRegistry

from monitor import keys
from monitor.live.alerts import AlertEvent, StateEvent
from monitor.live.sinks import FanoutSink, MemorySink, RedisSink, StdoutSink, score_fields
from monitor.live.sinks.base import sink_ready_check
from monitor.live.sinks.fields import features_json
from monitor.metrics import StreamMetrics
from monitor.types import Score, StreamScore, WindowFeatures

from .redisproc import RedisProcess


def score(stream: str, seq: int, p: float | None = 0.25) -> StreamScore:
    wf = WindowFeatures(features=np.arange(21, dtype=np.float64) + seq, repeated_frames=0)
    return StreamScore(stream, seq, 0, seq * 0.087, seq * 0.087 + 2.0,
                       Score(window=wf, p_ai=p, threshold=0.5, source=stream,
                             repeated_samples=0),
                       arrival_s=0.0, scored_at=1000.0 + seq)


_clients: list[redis.Redis] = []


def sync_client(url: str) -> redis.Redis:
    """A sync client (decoded replies) closed when the test ends: an unclosed one's
    socket warns when it is collected (ResourceWarning, an error in whichever test the
    collector runs in)."""
    client = redis.Redis.from_url(url, decode_responses=True)
    _clients.append(client)
    return client


@pytest.fixture(autouse=True)
def _close_sync_clients() -> Iterator[None]:
    yield
    while _clients:
        _clients.pop().close()


@pytest.fixture
def redis_proc(tmp_path: Path) -> Iterator[RedisProcess]:
    rp = RedisProcess(tmp_path)
    rp.start()
    try:
        yield rp
    finally:
        rp.stop()


async def test_scores_and_latest_are_written_together(redis_proc: RedisProcess) -> None:
    registry = CollectorRegistry()
    sink = RedisSink.from_url(redis_proc.url, metrics=StreamMetrics(registry), scores_maxlen=50)
    await sink.start()
    for i in range(120):
        sink.publish(score("cam-1", i))
    sink.publish_event(AlertEvent("cam-1", "alert_start", 0.9, 1000.0, 998.0))
    assert await sink.flush(10)
    await sink.aclose()
    r = sync_client(redis_proc.url)
    entries = r.xrange(keys.stream_scores("cam-1"))
    assert 50 <= len(entries) < 120  # capped, approximately
    latest = r.hgetall(keys.stream_latest("cam-1"))
    assert latest == entries[-1][1]
    assert latest["seq"] == "119" and latest["p_ai"] == "0.25" and latest["is_ai"] == "0"
    assert json.loads(latest["features"])[0] == 119.0
    assert keys.stream_scores("cam-1") == "restrav:{cam-1}:scores"
    ev = r.xrange(keys.EVENTS)
    assert len(ev) == 1 and ev[0][1]["kind"] == "alert_start" and ev[0][1]["stream"] == "cam-1"
    assert registry.get_sample_value("restrav_sink_writes_total",
                                     {"sink": "redis", "outcome": "ok"}) >= 1
    assert registry.get_sample_value("restrav_stream_e2e_latency_seconds_count",
                                     {"stream": "cam-1"}) == 120


async def test_outage_buffers_then_flushes_on_reconnect(redis_proc: RedisProcess) -> None:
    registry = CollectorRegistry()
    sink = RedisSink.from_url(redis_proc.url, connect_timeout_s=0.5,
                              metrics=StreamMetrics(registry), buffer_max=1000)
    sink.retry_cap_s = 0.5
    await sink.start()
    sink.publish(score("s", 0))
    assert await sink.flush(10)
    redis_proc.stop()
    for i in range(1, 40):
        sink.publish(score("s", i))
    await asyncio.sleep(1.0)
    assert not sink.available and sink.buffered == 39  # nothing lost, nothing written
    redis_proc.start()  # an empty server on the same port
    assert await sink.flush(20)
    await sink.aclose()
    r = sync_client(redis_proc.url)
    seqs = [int(e[1]["seq"]) for e in r.xrange(keys.stream_scores("s"))]
    assert seqs == list(range(1, 40))
    assert r.hget(keys.stream_latest("s"), "seq") == "39"
    assert registry.get_sample_value("restrav_sink_writes_total",
                                     {"sink": "redis", "outcome": "error"}) >= 1


async def test_bounded_buffer_drops_oldest_and_counts(tmp_path: Path) -> None:
    rp = RedisProcess(tmp_path)  # never started: Redis is down the whole time
    registry = CollectorRegistry()
    sink = RedisSink.from_url(rp.url, connect_timeout_s=0.2, metrics=StreamMetrics(registry),
                              buffer_max=10)
    await sink.start()
    for i in range(25):
        sink.publish(score("s", i))
    await asyncio.sleep(0.5)
    assert sink.buffered == 10 and sink.dropped == 15
    assert registry.get_sample_value("restrav_sink_dropped_total",
                                     {"sink": "redis", "reason": "buffer_full"}) == 15
    rp.start()
    try:
        assert await sink.flush(20)
        r = sync_client(rp.url)
        assert [int(e[1]["seq"]) for e in r.xrange(keys.stream_scores("s"))] == list(range(15, 25))
    finally:
        await sink.aclose()
        rp.stop()


async def test_stdout_sink_writes_json_lines_and_fanout_reaches_all() -> None:
    out = io.StringIO()
    std = StdoutSink(stream=out)
    mem = MemorySink()
    fan = FanoutSink([std, mem])
    await fan.start()
    fan.publish(score("a", 0, p=None))
    fan.publish_event(AlertEvent("a", "alert_end", 0.1, 5.0, 1.0))
    fan.publish_event(StateEvent("a", "stalled", 6.0, "running"))  # not on stdout
    assert await fan.flush(5)
    await fan.aclose()
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert len(lines) == 2
    assert lines[0]["type"] == "score" and lines[0]["p_ai"] is None and lines[0]["stream"] == "a"
    assert len(lines[0]["features"]) == 21  # without a classifier, the features are the output
    assert lines[1] == {"type": "event", "stream": "a", "kind": "alert_end", "p_ai": 0.1,
                        "at": 5.0, "since": 1.0}
    assert len(mem.scores) == 1 and len(mem.events) == 1
    assert [e.to_json() for e in mem.states] == [
        {"stream": "a", "kind": "state", "state": "stalled", "at": 6.0, "previous": "running"}]


async def test_a_rejected_write_is_kept_retried_and_logged_once(
    redis_proc: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """An error that is no outage (``WRONGTYPE``: the score stream's key holds a string)
    neither kills the writer nor loses the batch: not ready, logged once, retried, and
    written once the key is fixed."""
    r = sync_client(redis_proc.url)
    r.set(keys.stream_scores("s"), "not a stream")
    registry = CollectorRegistry()
    sink = RedisSink.from_url(redis_proc.url, metrics=StreamMetrics(registry),
                              retry_floor_s=0.01, retry_cap_s=0.02)
    ready = sink_ready_check(sink)
    await sink.start()
    for i in range(30):
        sink.publish(score("s", i))

    def failed() -> float:
        return registry.get_sample_value("restrav_sink_writes_total",
                                         {"sink": "redis", "outcome": "failed"}) or 0.0

    for _ in range(500):  # retried, with the writer alive
        assert sink.writing, "the writer task died of the error"
        if failed() >= 5:
            break
        await asyncio.sleep(0.02)
    assert failed() >= 5, "the batch was not retried"
    ok, why = await ready()
    assert not ok and "ResponseError" in why and "30 buffered" in why, why
    assert sink.buffered == 30
    logged = [rec for rec in caplog.records if "write failed" in rec.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None  # once, with its traceback
    assert "WRONGTYPE" in str(logged[0].exc_info[1])
    r.delete(keys.stream_scores("s"))
    assert await sink.flush(10)
    assert (await ready())[0]
    await sink.aclose()
    assert [int(e[1]["seq"]) for e in r.xrange(keys.stream_scores("s"))] == list(range(30))


async def test_a_writer_that_stops_is_not_ready() -> None:
    """Should the writer task end before the sink is closed (here: cancelled), the sink
    says so instead of reporting ready with nobody writing."""
    sink = MemorySink()
    ready = sink_ready_check(sink)
    await sink.start()
    assert sink.writing and (await ready())[0]
    assert sink._task is not None
    sink._task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await sink._task
    assert not sink.writing
    ok, why = await ready()
    assert not ok and "writer stopped" in why, why


@pytest.fixture
def r(redis_proc: RedisProcess) -> Iterator[redis.Redis]:
    """A client of ``redis_proc`` (closed after the test: an unclosed socket is a
    ResourceWarning, an error in whichever test the collector runs in)."""
    client = redis.Redis.from_url(redis_proc.url, decode_responses=True)
    try:
        yield client
    finally:
        client.close()


def _reference_fields(s: StreamScore) -> dict[str, str]:
    """The stored fields as first defined: ``str`` of each value of ``to_json``."""
    out: dict[str, str] = {}
    for k, v in s.to_json(features=True).items():
        if k == "features":
            out[k] = json.dumps(v)
        elif v is None:
            out[k] = ""
        elif isinstance(v, bool):
            out[k] = "1" if v else "0"
        else:
            out[k] = str(v)
    return out


def test_score_fields_are_the_json_values_as_strings() -> None:
    """``score_fields`` builds the values without ``to_json``; they stay the same strings
    (None, booleans, rounding, a feature that is not finite)."""
    wf = WindowFeatures(features=np.array([0.1, -2.5e-7, np.nan] + [1 / 3] * 18),
                        repeated_frames=2, zero_step_angle_deg=90.0)
    cases = [
        score("a", 7),
        score("b", 0, p=None),
        score("c", 3, p=0.75),
        StreamScore("d", 12, 2, 1 / 7, 2 / 7, Score(window=wf, p_ai=np.float64(0.5),
                                                     threshold=None, repeated_samples=None),
                    arrival_s=0.0, scored_at=1700000000.123456789, wall_start=1 / 3,
                    wall_end=2 / 3, fence=4),
    ]
    for s in cases:
        assert score_fields(s) == _reference_fields(s)
        assert list(score_fields(s)) == list(s.to_json(features=True))


def _awkward_floats(rng: np.random.Generator, n: int) -> np.ndarray:
    """Floats whose text is hard: every magnitude (random bit patterns), float32 values
    widened, short decimals, powers of ten and two at the edges of ``repr``'s notation
    switches, signed zeros, NaN and the infinities."""
    bits = rng.integers(0, 2**63, n, dtype=np.int64).view(np.float64)
    edges = [0.0, -0.0, np.nan, np.inf, -np.inf, 1e-4, -1e-4, np.nextafter(1e-4, 0),
             9.999999999999999e-05, 1.5e-05, 1e-5, 1e-7, 1e16, np.nextafter(1e16, 0),
             1e15, 1e17, 123456789012345678.0, 5e-324, 1.7976931348623157e308, 0.1, 1 / 3,
             2.0**-14, 2.0**53, 2.0**53 + 2, 5.0, -2.5e-7, 90.0, 1e22, 1e23]
    return np.concatenate([
        bits[np.isfinite(bits)],
        rng.random(n) * 10.0 ** rng.integers(-8, 20, n),
        (rng.standard_normal(n).astype(np.float32)).astype(np.float64),
        np.array([round(x, d) for x, d in zip(rng.random(n) * 1000, rng.integers(0, 7, n))]),
        np.array(edges * 3),
    ])


def test_features_json_is_the_text_of_json_dumps() -> None:
    """The batch's features are formatted at once (pydantic_core) where that gives the
    same text, ``json.dumps`` elsewhere: every row is ``json.dumps`` of its list, for
    floats of every magnitude and kind, in rows mixing fast and slow values."""
    rng = np.random.default_rng(25)
    values = _awkward_floats(rng, 20_000)
    rng.shuffle(values)
    values = values[: len(values) // 21 * 21]
    rows = values.reshape(-1, 21)
    # and rows of values the fast path takes only (most rows of the mixture hold a value
    # below 1e-4: random bit patterns are mostly tiny or huge)
    plain = rng.random((300, 21)) * 10.0 ** rng.integers(-3, 17, (300, 21))
    for m in (rows, plain, plain.astype(np.float32), rows[:1], rows[:0]):
        assert features_json(m) == [json.dumps(r.tolist()) for r in m]
    assert sum(all(v == 0 or abs(v) >= 1e-4 or not np.isfinite(v) for v in r)
               for r in rows) > 10  # both paths were taken
    with pytest.raises(ValueError):
        features_json(np.arange(21).reshape(1, 21))


async def test_stored_scores_are_the_fields_of_the_old_derivation(
    redis_proc: RedisProcess, r: redis.Redis,
) -> None:
    """Through Redis, plain and fenced: every stored field of scores with awkward features
    (tiny, huge, NaN, signed zero) is the string the reference derivation gives."""
    rng = np.random.default_rng(3)
    values = _awkward_floats(rng, 200)
    batch = []
    for i in range(24):
        feats = rng.choice(values, 21)
        if i % 2:
            feats = rng.random(21) * 100  # rows of the fast path
        s = score("cam-a" if i < 12 else "cam-b", i % 12)
        batch.append(dataclasses.replace(s, score=dataclasses.replace(
            s.score, window=dataclasses.replace(s.score.window, features=feats))))
    sink = RedisSink.from_url(redis_proc.url, scores_maxlen=1000)
    await sink.write(batch[:12])
    await sink.aclose()
    fenced = RedisSink.from_url(redis_proc.url, scores_maxlen=1000, owner="r1")
    r.set(keys.stream_lease("cam-b"), keys.lease_value("r1", 5))
    r.set(keys.stream_fence("cam-b"), "5")
    await fenced.write([dataclasses.replace(s, fence=5) for s in batch[12:]])
    await fenced.aclose()
    stored = [f for _, f in r.xrange(keys.stream_scores("cam-a"))]
    assert stored == [_reference_fields(s) for s in batch[:12]]
    stored_b = [f for _, f in r.xrange(keys.stream_scores("cam-b"))]
    assert [{k: v for k, v in f.items() if k not in ("owner", "fence")}
            for f in stored_b] == [_reference_fields(s) for s in batch[12:]]


async def test_a_batch_is_one_call_and_no_transaction(
    redis_proc: RedisProcess, r: redis.Redis,
) -> None:
    """Scores of several streams interleaved in one batch, on one server: one script call
    for all of them (on a cluster one per stream: tests/test_queue_cluster.py), no MULTI,
    each stream's entries in order and its ``latest`` equal to its newest entry."""
    sink = RedisSink.from_url(redis_proc.url, scores_maxlen=1000)
    batch: list[Any] = [score(f"cam-{i % 3}", i // 3) for i in range(30)]
    batch.insert(4, AlertEvent("cam-1", "alert_start", 0.9, 1000.0, 998.0))
    await sink.write(batch)  # the first: NOSCRIPT, loaded, sent again
    r.config_resetstat()
    await sink.write([score(f"cam-{i % 3}", 10 + i // 3) for i in range(30)])
    stats = r.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 1
    assert stats["cmdstat_xadd"]["calls"] == 30 and stats["cmdstat_hset"]["calls"] == 3
    assert "cmdstat_multi" not in stats and "cmdstat_exec" not in stats
    await sink.aclose()
    for cam in ("cam-0", "cam-1", "cam-2"):
        entries = r.xrange(keys.stream_scores(cam))
        assert [int(f["seq"]) for _, f in entries] == list(range(20))
        assert entries[5][1] == _reference_fields(score(cam, 5))
        assert r.hgetall(keys.stream_latest(cam)) == entries[-1][1]
    assert [f["kind"] for _, f in r.xrange(keys.EVENTS)] == ["alert_start"]


async def test_a_stream_whose_call_fails_leaves_the_others_written_once(
    redis_proc: RedisProcess, r: redis.Redis,
) -> None:
    """One stream's key holds a string (``WRONGTYPE``): the other streams of the batch
    are written, and not again when the failed stream's scores are retried and written."""
    r.set(keys.stream_scores("bad"), "not a stream")
    sink = RedisSink.from_url(redis_proc.url, retry_floor_s=0.01, retry_cap_s=0.05)
    await sink.start()
    for i in range(10):
        sink.publish(score("good", i))
        sink.publish(score("bad", i))
    assert not await sink.flush(0.5)
    assert sink.buffered == 10 and not sink.available
    assert seqs_of(r, "good") == list(range(10))
    r.delete(keys.stream_scores("bad"))
    assert await sink.flush(10)
    await sink.aclose()
    assert seqs_of(r, "good") == list(range(10))  # not written twice
    assert seqs_of(r, "bad") == list(range(10))
    assert sink.written == 20


async def test_scripts_lost_by_the_server_are_loaded_again(
    redis_proc: RedisProcess, r: redis.Redis
) -> None:
    """A server that forgot the scripts (``SCRIPT FLUSH``, as after a restart or a
    failover) answers NOSCRIPT: the sink loads them and writes, with no failure."""
    registry = CollectorRegistry()
    sink = RedisSink.from_url(redis_proc.url, metrics=StreamMetrics(registry))
    await sink.start()
    for i in range(5):
        sink.publish(score("s", i))
    assert await sink.flush(10)
    r.script_flush()
    for i in range(5, 10):
        sink.publish(score("s", i))
    assert await sink.flush(10)
    await sink.aclose()
    assert seqs_of(r, "s") == list(range(10))
    assert not registry.get_sample_value("restrav_sink_writes_total",
                                         {"sink": "redis", "outcome": "failed"})
    assert not registry.get_sample_value("restrav_sink_writes_total",
                                         {"sink": "redis", "outcome": "error"})


async def test_fenced_scores_of_a_batch_written_again_are_not_repeated(
    redis_proc: RedisProcess, r: redis.Redis,
) -> None:
    """A fenced call carries several scores of a stream; written again with some new
    ones (a retry that found more buffered), only the new ones are appended."""
    r.set(keys.stream_fence("cam"), 3)
    r.set(keys.stream_lease("cam"), keys.lease_value("me", 3))
    sink = RedisSink.from_url(redis_proc.url, owner="me")
    first = [dataclasses.replace(score("cam", i), fence=3) for i in range(4)]
    await sink.write(first)
    await sink.write(first[2:] + [dataclasses.replace(score("cam", i), fence=3)
                                  for i in range(4, 6)])
    await sink.write(first[1:3])  # nothing new
    await sink.aclose()
    entries = r.xrange(keys.stream_scores("cam"))
    assert [int(f["seq"]) for _, f in entries] == list(range(6))
    assert entries[0][1] == {**_reference_fields(first[0]), "owner": "me", "fence": "3"}
    assert r.hgetall(keys.stream_latest("cam")) == entries[-1][1]
    assert sink.refused == 0


def seqs_of(r: redis.Redis, stream: str) -> list[int]:
    return [int(f["seq"]) for _, f in r.xrange(keys.stream_scores(stream))]


def test_features_json_keeps_to_json_dumps_where_to_json_formats_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The installed pydantic_core writes the probes as json.dumps does (the fast path is
    in use); one that did not would leave every row to json.dumps, same text."""
    from monitor.live.sinks import fields as fields_module

    assert fields_module._to_json_agrees(), "pydantic_core formats floats otherwise: slow path"
    rows = np.random.default_rng(1).random((50, 21)) * 100
    calls: list[Any] = []
    monkeypatch.setattr(fields_module, "_to_json_agrees", lambda: False)
    monkeypatch.setattr(fields_module, "to_json", lambda *a, **k: calls.append(a) or b"")
    assert features_json(rows) == [json.dumps(r.tolist()) for r in rows]
    assert calls == []
