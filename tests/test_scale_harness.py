"""The simulation harness of bench/bench_scale.py: the real `serve` with the stand-ins of
bench/standin.py (a backbone of known cost, synthetic live sources) on a real
redis-server. What the benchmark's figures rest on: serve uses the embedder it is given
(and loads no model), the synthetic streams' windows reach Redis, and the synthetic
source delivers frames on its clock (pts, jitter, bursts, phase)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import redis.asyncio as aioredis
from pydantic import SecretStr

from bench.standin import (
    StandInEmbedder,
    SyntheticSource,
    decoder_clock,
    register_synthetic_source,
)
from monitor.config import ApiSettings, RedisSettings, ServeSettings, Settings, StreamSpec
from monitor.types import FEATURE_NAMES, SourceClosed
from tests.redisproc import free_port


async def test_serve_scores_synthetic_streams_with_the_standin_backbone(redis_url: str) -> None:
    from workers.serve_cmd import serve

    register_synthetic_source()
    streams = tuple(StreamSpec(id=f"s{i}", url=f"synth://s{i}?fps=25&size=8&jitter_ms=5")
                    for i in range(3))
    settings = Settings(
        # a model that cannot be loaded: serve must use the embedder it is given
        model={"ref": "/nonexistent/model"},
        redis=RedisSettings(url=SecretStr(redis_url)),
        serve=ServeSettings(streams=streams, persist_streams=False,
                            api=ApiSettings(port=free_port(), token=SecretStr("t" * 24))),
    )
    embedder = StandInEmbedder(0.001, 0.0001)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop, embedder))
    client = aioredis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 90
        counts = [0, 0, 0]
        while min(counts) < 5 and time.monotonic() < deadline:
            assert not task.done(), task.result()
            counts = [await client.xlen(f"restrav:{{s{i}}}:scores") for i in range(3)]
            await asyncio.sleep(0.2)
        assert min(counts) >= 5, counts
        for i in range(3):
            (_, fields), = await client.xrevrange(f"restrav:{{s{i}}}:scores", count=1)
            assert len(json.loads(fields[b"features"])) == len(FEATURE_NAMES)
            assert fields[b"p_ai"] != b""  # the bundled classifier scored it
            latest = await client.hgetall(f"restrav:{{s{i}}}:latest")
            assert latest[b"stream"] == f"s{i}".encode()
        assert embedder.calls > 0
    finally:
        stop.set()
        rc = await asyncio.wait_for(task, 60)
        await client.aclose()
    assert rc == 0


def _source(**kw: float) -> SyntheticSource:
    return SyntheticSource("synth://x", fps=25.0, size=4, **kw)  # type: ignore[arg-type]


def test_synthetic_frames_are_due_on_the_source_clock() -> None:
    src = _source()
    t0 = src.due(0)
    assert [src.due(i) - t0 for i in range(4)] == pytest.approx([0, 0.04, 0.08, 0.12])


def test_jitter_delays_delivery_within_its_bound() -> None:
    src = _source(jitter_s=0.01)
    base = _source()
    delays = [src.due(i) - src._t0 - (base.due(i) - base._t0) for i in range(500)]
    assert min(delays) >= 0.0 and max(delays) <= 0.01
    assert max(delays) - min(delays) > 0.005  # it does jitter


def test_bursts_hold_frames_to_the_end_of_the_burst() -> None:
    src = _source(burst_every_s=1.0, burst_s=0.2)
    due = [src.due(i) - src._t0 for i in range(50)]  # two seconds at 25 fps
    # frames 0-4 (0.00-0.16 s) are held to 0.2 s, 25-29 to 1.2 s; the rest are on time
    assert due[0:5] == pytest.approx([0.2] * 5)
    assert due[25:30] == pytest.approx([1.2] * 5)
    assert due[5:25] == pytest.approx([i / 25 for i in range(5, 25)])
    assert due[30] == pytest.approx(1.2)


def test_streams_start_at_different_phases_within_one_frame() -> None:
    t = time.monotonic()
    starts = [SyntheticSource(f"s{i}", 25.0, 4, phase=True)._t0 - t for i in range(20)]
    assert all(-0.01 <= s <= 0.05 for s in starts)
    assert len({round(s, 4) for s in starts}) > 10


async def test_the_source_hands_over_frames_with_regular_pts() -> None:
    src = SyntheticSource("s", 50.0, 4, frames=5)
    pts = [(await src.recv()).pts_s for _ in range(5)]
    assert pts == pytest.approx([0, 0.02, 0.04, 0.06, 0.08])
    with pytest.raises(Exception, match="s"):
        await src.recv()


async def test_a_source_far_behind_keeps_only_its_buffer_and_reports_the_hole() -> None:
    src = SyntheticSource("s", 100.0, 4, buffer_frames=2)
    src._t0 = time.monotonic() - 0.1  # 11 frames are due: the first 9 were dropped
    f = await src.recv()
    assert f.dropped_before >= 9 and f.pts_s == pytest.approx(f.dropped_before / 100)
    g = await src.recv()
    assert g.dropped_before == 0 and g.index == f.index + 1


async def test_clocked_frames_come_through_a_frame_buffer_that_keeps_the_latest() -> None:
    clock = decoder_clock()
    src = SyntheticSource("c", 100.0, 4, buffer_frames=3).clocked(clock)
    first = await src.recv()
    assert first.index == 0 and first.dropped_before == 0
    await asyncio.sleep(0.2)  # about 20 frames due; the buffer keeps the last 3
    late = await src.recv()
    assert late.dropped_before >= 10
    assert late.index == first.index + late.dropped_before + 1
    assert late.pts_s == pytest.approx(late.index / 100)
    nxt = await src.recv()
    assert nxt.index == late.index + 1 and nxt.dropped_before == 0
    await src.aclose()
    assert id(src) not in clock.sources


async def test_the_decoder_clock_counts_the_cpu_time_of_its_ticks() -> None:
    """bench_scale reports the stand-in sources' own CPU from ``DecoderClock.cpu_s``: it
    grows while ticks deliver frames and stays within the thread's CPU time."""
    clock = decoder_clock()
    before, cpu0 = clock.cpu_s, time.thread_time()
    srcs = [SyntheticSource(f"t{i}", 200.0, 4, buffer_frames=4).clocked(clock)
            for i in range(50)]
    await asyncio.sleep(0.2)
    spent = clock.cpu_s - before
    assert 0 < spent <= time.thread_time() - cpu0
    for src in srcs:
        await src.aclose()


class _Counted(SyntheticSource):
    """Counts the clock's visits."""

    visits = 0

    def deliver(self, now: float) -> None:
        self.visits += 1
        super().deliver(now)


async def test_the_loop_clock_visits_a_source_when_its_frame_is_due_only() -> None:
    """The tick takes the sources whose next frame is due (a heap), not all of them every
    tick: slow sources are visited about once a frame; a finite source ends, a removed
    one is not visited again; a fast one beside them gets every frame."""
    clock = decoder_clock()
    slow = [_Counted(f"v{i}", 4.0, 4, buffer_frames=4).clocked(clock) for i in range(20)]
    fast = _Counted("vf", 200.0, 4, buffer_frames=64).clocked(clock)
    finite = _Counted("vn", 200.0, 4, frames=3, buffer_frames=8).clocked(clock)
    await asyncio.sleep(0.3)  # 60 ticks of 5 ms; each slow source is due twice at most
    assert all(1 <= s.visits <= 3 for s in slow), [s.visits for s in slow]
    assert [(await finite.recv()).index for _ in range(3)] == [0, 1, 2]
    with pytest.raises(SourceClosed):
        await finite.recv()
    ended = finite.visits
    frames = [await fast.recv() for _ in range(20)]
    assert [f.index for f in frames] == list(range(20))
    await fast.aclose()
    gone = fast.visits
    await asyncio.sleep(0.1)
    assert fast.visits == gone and finite.visits == ended
    for s in slow:
        await s.aclose()


async def test_a_threaded_decoder_clock_puts_each_frame_from_its_own_thread() -> None:
    """``delivery=thread``: frames come in order with regular pts, put by the clock's
    thread (not the loop), whose CPU time is counted and which ends with its sources."""
    clock = decoder_clock(threaded=True)
    assert clock is not decoder_clock() and clock is decoder_clock(threaded=True)
    srcs = [SyntheticSource(f"d{i}", 100.0, 4, phase=True, buffer_frames=8).clocked(clock)
            for i in range(3)]
    for src in srcs:
        frames = [await src.recv() for _ in range(5)]
        assert [f.index for f in frames] == list(range(5))
        assert [f.pts_s for f in frames] == pytest.approx([i / 100 for i in range(5)])
    thread = clock._thread
    assert thread is not None and thread.name == "synth-decode" and clock.cpu_s > 0
    for src in srcs:
        await src.aclose()
    thread.join(2)
    assert not thread.is_alive()
