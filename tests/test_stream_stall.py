"""The stream task's stall watchdog: a stream without frames for ``stall_after_s`` is
``stalled`` (its window ends, gap ``stall``); frames coming back make it ``running``
again without a reconnect; after ``stall_reconnect_s`` the read ends with a ``stalled``
error and the stream reconnects. Real StreamManager, stream tasks and Engine; the
source is a test kind whose frames stop on cue."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import numpy as np
from prometheus_client import CollectorRegistry

from bench.standin import StandInEmbedder
from monitor.config import ServeSettings, StreamSpec
from monitor.live.engine import Engine
from monitor.live.service import StreamManager
from monitor.live.sinks import MemorySink
from monitor.media.sources.base import SourceContext, SourceFrame, register_source_kind
from monitor.metrics import StreamMetrics

IMAGE = np.zeros((8, 8, 3), dtype=np.uint8)
PAUSES: dict[str, tuple[int, float]] = {}
"""Per stream: after this many frames (of each connection), hold the next for this long."""


class PausingSource:
    """50 fps; after ``PAUSES[name][0]`` frames the next is held ``PAUSES[name][1]`` s."""

    def __init__(self, name: str) -> None:
        self.description = name
        self.after, self.hold_s = PAUSES[name]
        self.i = 0
        self.t0 = time.monotonic()

    @classmethod
    async def open(cls, spec: StreamSpec, ctx: SourceContext) -> PausingSource:
        return cls(spec.id)

    async def recv(self) -> SourceFrame:
        await asyncio.sleep(0.02)
        if self.i == self.after:
            await asyncio.sleep(self.hold_s)
        i = self.i
        self.i += 1
        return SourceFrame(pts_s=i * 0.02 + (self.hold_s if i > self.after else 0.0),
                           arrival_s=time.monotonic(), index=i, image=IMAGE,
                           to_rgb=lambda im: im)

    async def aclose(self) -> None:
        pass


async def _run(name: str, after: int, hold_s: float,
               until: Callable[[StreamManager], bool]) -> StreamManager:
    PAUSES[name] = (after, hold_s)
    register_source_kind("pausing", PausingSource.open, ("pausing",))
    settings = ServeSettings(persist_streams=False, source={
        "stall_after_s": 0.3, "stall_reconnect_s": 1.0,
        "backoff": {"floor_s": 0.05, "cap_s": 0.1}})
    metrics = StreamMetrics(CollectorRegistry())
    engine = Engine(StandInEmbedder(0.001, 0.0001, dim=8), None, settings.engine, metrics)
    engine.start(asyncio.get_running_loop())
    manager = StreamManager(engine, MemorySink(), settings, metrics)
    await manager.add(StreamSpec(id=name, url=f"pausing://{name}"), persist=False)
    deadline = time.monotonic() + 30
    while not until(manager) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await manager.stop()
    await engine.drain(10)
    return manager


def _states(manager: StreamManager, sid: str) -> list[str]:
    st = manager.get(sid)
    assert st is not None
    return [s for s, _ in st.history]


async def test_a_short_stall_ends_the_window_and_the_stream_runs_on() -> None:
    # held 0.6 s: past stall_after_s (0.3), short of stall_reconnect_s (1.0)
    def done(m: StreamManager) -> bool:
        st = m.get("short")
        return st is not None and st.frames > 60

    manager = await _run("short", 20, 0.6, done)
    st = manager.get("short")
    assert st is not None and st.frames > 60
    states = _states(manager, "short")
    assert states[:4] == ["starting", "running", "stalled", "running"], states
    assert st.gaps.get("stall") == 1
    assert st.reconnects == 0 and "reconnecting" not in states


async def test_a_long_stall_ends_the_read_and_the_stream_reconnects() -> None:
    def done(m: StreamManager) -> bool:
        st = m.get("long")
        return st is not None and st.reconnects >= 1 and st.state == "running"

    t0 = time.monotonic()
    manager = await _run("long", 10, 60.0, done)
    st = manager.get("long")
    assert st is not None and st.reconnects >= 1, _states(manager, "long")
    states = _states(manager, "long")
    assert states[:5] == ["starting", "running", "stalled", "reconnecting", "running"], states
    assert st.gaps.get("stall", 0) >= 1 and st.gaps.get("reconnect", 0) >= 1
    assert st.error is None or st.error["code"] == "stalled"
    # the read ended after stall_reconnect_s, not at the first stall and not never
    assert time.monotonic() - t0 < 20


CLOSING: dict[str, int] = {"n": 0, "started": 0, "alone": 0}
ALL_CLOSING: list[asyncio.Event] = []


class ClosingSource:
    """50 fps; its ``aclose`` waits (2 s at most) until every source of the test is
    closing: closed one after the other, each would wait alone (counted)."""

    def __init__(self, name: str) -> None:
        self.description = name
        self.i = 0

    @classmethod
    async def open(cls, spec: StreamSpec, ctx: SourceContext) -> ClosingSource:
        return cls(spec.id)

    async def recv(self) -> SourceFrame:
        await asyncio.sleep(0.02)
        self.i += 1
        return SourceFrame(pts_s=self.i * 0.02, arrival_s=time.monotonic(), index=self.i,
                           image=IMAGE, to_rgb=lambda im: im)

    async def aclose(self) -> None:
        CLOSING["started"] += 1
        if CLOSING["started"] == CLOSING["n"]:
            ALL_CLOSING[0].set()
        try:
            await asyncio.wait_for(ALL_CLOSING[0].wait(), 2.0)
        except TimeoutError:
            CLOSING["alone"] += 1


async def test_stop_cancels_every_stream_before_waiting_for_any() -> None:
    """``stop`` cancels all stream tasks at once and then waits for them: cancelled and
    awaited one by one, shutting hundreds of streams down on a saturated event loop
    took minutes, past the drain deadline."""
    CLOSING.update(n=4, started=0, alone=0)
    ALL_CLOSING[:] = [asyncio.Event()]
    register_source_kind("closing", ClosingSource.open, ("closing",))
    settings = ServeSettings(persist_streams=False)
    metrics = StreamMetrics(CollectorRegistry())
    engine = Engine(StandInEmbedder(0.001, 0.0001, dim=8), None, settings.engine, metrics)
    engine.start(asyncio.get_running_loop())
    manager = StreamManager(engine, MemorySink(), settings, metrics)
    for i in range(4):
        await manager.add(StreamSpec(id=f"c{i}", url=f"closing://c{i}"), persist=False)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all(
        (st := manager.get(f"c{i}")) is not None and st.frames > 0 for i in range(4)
    ):
        await asyncio.sleep(0.05)
    await manager.stop()
    await engine.drain(10)
    assert CLOSING["started"] == 4 and CLOSING["alone"] == 0
    assert all(_states(manager, f"c{i}")[-1] == "stopped" for i in range(4))
