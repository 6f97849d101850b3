"""Backoff with full jitter, alert hysteresis, the decode-thread frame buffer."""

from __future__ import annotations

import asyncio
import random
import threading
from typing import Any

import numpy as np
import pytest

from monitor.live.alerts import AlertTracker
from monitor.live.service import Backoff, strip_credentials
from monitor.media.sources import DropPolicy, FrameBuffer, SourceClosed, SourceError, SourceFrame
from monitor.media.sources.base import LoopWaker


def test_backoff_delays_stay_between_floor_and_exponential_ceiling() -> None:
    b = Backoff(floor_s=0.5, cap_s=8.0, reset_after_s=30.0, rng=random.Random(1))
    for n in range(12):
        ceiling = min(8.0, 0.5 * 2**n)
        d = b.next_delay()
        assert 0.5 <= d <= ceiling
    assert b.ceiling() == 8.0


def test_backoff_is_jittered_not_fixed() -> None:
    delays = set()
    for seed in range(20):
        b = Backoff(0.1, 10.0, 5.0, rng=random.Random(seed))
        b.attempt = 5
        delays.add(round(b.next_delay(), 6))
    assert len(delays) > 10


def test_backoff_resets_only_after_a_stable_run() -> None:
    b = Backoff(0.5, 30.0, reset_after_s=10.0, rng=random.Random(0))
    for _ in range(5):
        b.next_delay()
    b.ran_for(3.0)  # a flapping connection keeps backing off
    assert b.attempt == 5
    b.ran_for(10.0)
    assert b.attempt == 0
    assert b.next_delay() == 0.5  # the first delay after a reset is the floor


def test_alert_enters_after_min_duration_and_leaves_below_lower_threshold() -> None:
    t = AlertTracker("s", enter=0.8, leave=0.6, min_duration_s=2.0)
    assert t.update(0.9, 0.0) is None  # above, but not for long enough
    assert t.update(0.5, 1.0) is None  # dropped below: the clock restarts
    assert t.update(0.85, 2.0) is None
    assert t.update(0.7, 3.0) is None  # between thresholds: not above enter
    assert t.update(0.9, 4.0) is None
    ev = t.update(0.95, 6.0)
    assert ev is not None and ev.kind == "alert_start" and ev.since == 4.0 and t.active
    assert t.update(0.65, 7.0) is None  # hysteresis: still above leave
    assert t.update(None, 7.5) is None  # no classifier output changes nothing
    end = t.update(0.55, 8.0)
    assert end is not None and end.kind == "alert_end" and end.since == 6.0 and not t.active


def test_alert_rejects_inverted_thresholds() -> None:
    with pytest.raises(ValueError):
        AlertTracker("s", enter=0.5, leave=0.6, min_duration_s=0)


def test_strip_credentials() -> None:
    assert strip_credentials("rtsp://u:p@cam:554/x?a=1") == ("rtsp://cam:554/x?a=1", True)
    assert strip_credentials("rtsp://cam/x") == ("rtsp://cam/x", False)


def _frame(i: int) -> SourceFrame:
    return SourceFrame(pts_s=i / 30, arrival_s=0.0, index=i, image=i,
                       to_rgb=lambda _: np.zeros((2, 2, 3), np.uint8))


async def test_buffer_keeps_latest_and_marks_the_drop() -> None:
    buf = FrameBuffer(asyncio.get_running_loop(), capacity=3, policy=DropPolicy.KEEP_LATEST)

    def produce() -> None:
        for i in range(10):
            buf.put(_frame(i))
        buf.close()

    t = threading.Thread(target=produce)
    t.start()
    t.join()
    got = []
    with pytest.raises(SourceClosed):
        while True:
            got.append(await buf.get())
    assert [f.index for f in got] == [7, 8, 9]
    assert buf.dropped == 7
    assert got[0].dropped_before == 7 and got[1].dropped_before == 0 == got[2].dropped_before


async def test_buffer_block_policy_loses_nothing_and_ends_with_the_error() -> None:
    buf = FrameBuffer(asyncio.get_running_loop(), capacity=2, policy=DropPolicy.BLOCK)

    def produce() -> None:
        for i in range(20):
            buf.put(_frame(i))
        buf.close(SourceError("lost", code="eof"))

    t = threading.Thread(target=produce)
    t.start()
    got = []
    with pytest.raises(SourceError):
        while True:
            got.append((await buf.get()).index)
    t.join()
    assert got == list(range(20)) and buf.dropped == 0


async def test_buffers_sharing_a_waker_lose_no_frame_and_no_wake_up() -> None:
    """Forty decode threads, each into its own small blocking buffer, all sharing one
    :class:`LoopWaker`: every consumer gets every frame in order (a lost wake-up would
    leave a consumer waiting for good)."""
    loop = asyncio.get_running_loop()
    waker = LoopWaker(loop)
    bufs = [FrameBuffer(loop, capacity=2, policy=DropPolicy.BLOCK, waker=waker)
            for _ in range(40)]

    def produce(buf: FrameBuffer) -> None:
        for i in range(150):
            buf.put(_frame(i))
        buf.close()

    async def consume(buf: FrameBuffer) -> list[int]:
        got = []
        with pytest.raises(SourceClosed):
            while True:
                got.append((await buf.get()).index)
        return got

    threads = [threading.Thread(target=produce, args=(b,)) for b in bufs]
    for t in threads:
        t.start()
    got = await asyncio.wait_for(asyncio.gather(*(consume(b) for b in bufs)), 30)
    for t in threads:
        t.join()
    assert all(g == list(range(150)) for g in got)


async def test_a_waker_coalesces_the_events_set_before_the_loop_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Events set while a wake-up is pending ride on it: one self-pipe write for all."""
    loop = asyncio.get_running_loop()
    scheduled = []
    real = loop.call_soon_threadsafe

    def counting(cb: Any, *args: Any) -> Any:
        scheduled.append(cb)
        return real(cb, *args)

    monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
    waker = LoopWaker(loop)
    events = [asyncio.Event() for _ in range(100)]
    setter = threading.Thread(target=lambda: [waker.set(e) for e in events])
    setter.start()
    setter.join()  # the loop did not run meanwhile: one wake-up is pending
    assert len(scheduled) == 1
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 5)
    waker.set(events[0])  # the next one wakes the loop again
    assert len(scheduled) == 2


@pytest.mark.parametrize(("kind", "state", "reason"), [
    ("whip", "reconnecting", "no_publisher"),  # the publisher left
    ("rtsp", "paused", "paused"),
    ("rtsp", "failed", "failed"),
    ("rtsp", "stopped", "stopped"),  # deleted, replaced or shut down
    ("rtsp", "reconnecting", None),  # a camera's brief reconnect keeps its alert
    ("whip", "stalled", None),
])
def test_an_unwatched_stream_leaves_its_alert(kind: str, state: str, reason: str | None) -> None:
    from prometheus_client import CollectorRegistry

    from monitor.config import StreamSpec, load_settings
    from monitor.live.alerts import AlertEvent
    from monitor.live.stream_state import ManagedStream
    from monitor.live.stream_task import StreamRunner
    from monitor.metrics import StreamMetrics

    metrics = StreamMetrics(CollectorRegistry())
    events: list[AlertEvent] = []
    runner = StreamRunner(
        None, load_settings().serve, metrics, 1, 1 << 20,  # type: ignore[arg-type]
        random.Random(0), lambda: 50.0, lambda st, ev: events.append(ev),
    )
    st = ManagedStream(StreamSpec(id="s", url=f"{kind}://127.0.0.1/s"), kind, 8,
                       AlertTracker("s", 0.8, 0.6, 0.0))
    runner.set_state(st, "running")
    assert st.tracker.update(0.9, 10.0) is not None
    st.status.alert_active = True
    metrics.alert_active.labels("s").set(1)

    runner.set_state(st, state)

    gauge = metrics.registry.get_sample_value("restrav_stream_alert_active", {"stream": "s"})
    awaiting = metrics.registry.get_sample_value("restrav_stream_awaiting_publisher",
                                                 {"stream": "s"})
    assert awaiting == (1 if reason == "no_publisher" else 0)
    if reason is None:
        assert events == [] and st.tracker.active and gauge == 1
        return
    assert [(e.kind, e.reason, e.p_ai, e.at, e.since) for e in events] == [
        ("alert_end", reason, 0.9, 50.0, 10.0)]
    assert not st.tracker.active and st.status.alert_active is False and gauge == 0
    assert events[0].to_json()["reason"] == reason


@pytest.mark.parametrize("min_duration_s", [0.0, 1.5])
async def test_a_window_scored_after_the_stream_was_paused_leaves_its_alert_alone(
    min_duration_s: float,
) -> None:
    """Windows still in the engine when a stream is paused are scored after its
    ``alert_end``: they are published, but start no alert (``min_duration_s`` 0) and arm
    none (a high score after resuming must wait ``min_duration_s`` again)."""
    from monitor.config import StreamSpec, load_settings
    from monitor.live.alerts import AlertEvent
    from monitor.live.service import StreamManager
    from monitor.live.sinks.memory import MemorySink
    from monitor.live.stream_state import ManagedStream
    from monitor.types import Score, StreamScore, WindowFeatures

    sink = MemorySink()
    mgr = StreamManager(None, sink, load_settings().serve)  # type: ignore[arg-type]
    st = ManagedStream(StreamSpec(id="s", url="rtsp://127.0.0.1/s"), "rtsp", 8,
                       AlertTracker("s", 0.8, 0.6, min_duration_s))
    mgr._streams["s"] = st

    def score(seq: int, p_ai: float, at: float) -> StreamScore:
        wf = WindowFeatures(features=np.zeros(21), repeated_frames=0)
        return StreamScore("s", seq, 0, 0.0, 2.0, Score(window=wf, p_ai=p_ai),
                           arrival_s=0.0, scored_at=at)

    mgr.runner.set_state(st, "running")
    mgr._on_score(st, score(0, 0.9, 10.0))  # above: armed (or started at once)
    mgr.runner.set_state(st, "paused")  # alert_end if it started; disarmed
    mgr._on_score(st, score(1, 0.9, 11.0))  # a window that was in the engine
    assert not st.tracker.active and st.status.alert_active is False
    mgr.runner.set_state(st, "running")
    mgr._on_score(st, score(2, 0.9, 12.0))
    mgr._on_score(st, score(3, 0.9, 12.6))
    assert st.tracker.active is (min_duration_s == 0.0)  # armed anew at 12.0, not at 11.0
    scores = [x.seq for x in sink._buf if isinstance(x, StreamScore)]
    events = [(x.kind, x.reason) for x in sink._buf if isinstance(x, AlertEvent)]
    assert scores == [0, 1, 2, 3]  # every window published
    if min_duration_s == 0.0:
        assert events == [("alert_start", None), ("alert_end", "paused"), ("alert_start", None)]
    else:
        assert events == []
