"""Frames handed over per sample, not per frame (:meth:`FrameBuffer.get_due`, a source's
``recv_due``): a waiting reader is woken only by a frame that may close the sample time
it waits for, or may end the window, or a half-full buffer; the frames before it come
with it. The stream task reads a source that has ``recv_due`` that way and makes the
very samples the sampler makes over every frame, one by one."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import Any, cast

import numpy as np
import pytest

from monitor.config import ServeSettings, StreamSpec
from monitor.live.alerts import AlertTracker
from monitor.live.batch import EngineSample
from monitor.live.engine import Engine, StreamCounts
from monitor.live.stream_state import ManagedStream
from monitor.live.stream_task import StreamRunner
from monitor.media.sampler import LiveSampler
from monitor.media.sources import DropPolicy, FrameBuffer, SourceClosed, SourceFrame
from monitor.types import SAMPLE_INTERVAL_S

IMAGE = np.zeros((2, 2, 3), np.uint8)


def _frame(i: int, pts_s: float, dropped_before: int = 0) -> SourceFrame:
    return SourceFrame(pts_s=pts_s, arrival_s=time.monotonic(), index=i, image=IMAGE,
                       to_rgb=lambda im: im, dropped_before=dropped_before)


async def _turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def _waiting_reader(buf: FrameBuffer, next_pts_s: float | None,
                          ) -> asyncio.Task[list[SourceFrame]]:
    task = asyncio.create_task(buf.get_due(next_pts_s))
    await _turns()
    assert not task.done()  # the buffer is empty: it waits
    return task


async def test_frames_before_the_sample_time_wake_no_reader_and_come_with_the_next() -> None:
    buf = FrameBuffer(asyncio.get_running_loop(), capacity=8)
    task = await _waiting_reader(buf, 0.1)
    buf.put(_frame(0, 0.04))
    buf.put(_frame(1, 0.08))
    await _turns()
    assert not task.done()
    buf.put(_frame(2, 0.12))  # may close t = 0.1
    got = await asyncio.wait_for(task, 5)
    assert [f.index for f in got] == [0, 1, 2]


async def test_without_a_sample_time_every_frame_wakes_the_reader() -> None:
    buf = FrameBuffer(asyncio.get_running_loop(), capacity=8)
    task = await _waiting_reader(buf, None)
    buf.put(_frame(0, 5.0))
    assert [f.index for f in await asyncio.wait_for(task, 5)] == [0]


async def test_a_frame_that_may_end_the_window_wakes_the_reader() -> None:
    loop = asyncio.get_running_loop()
    buf = FrameBuffer(loop, capacity=8)
    buf.put(_frame(0, 1.0))
    assert len(await buf.get_due(None)) == 1
    task = await _waiting_reader(buf, 1.05)
    buf.put(_frame(1, 0.0))  # time went back
    assert [f.index for f in await asyncio.wait_for(task, 5)] == [1]
    task = await _waiting_reader(buf, 0.05)
    buf.put(_frame(2, 0.01, dropped_before=3))  # a hole before it
    assert [f.index for f in await asyncio.wait_for(task, 5)] == [2]
    task = await _waiting_reader(buf, 0.05)
    buf.put(_frame(3, float("nan")))
    assert [f.index for f in await asyncio.wait_for(task, 5)] == [3]


async def test_a_half_full_buffer_wakes_the_reader_before_it_would_drop() -> None:
    buf = FrameBuffer(asyncio.get_running_loop(), capacity=6, policy=DropPolicy.KEEP_LATEST)
    task = await _waiting_reader(buf, 100.0)
    for i in range(2):
        buf.put(_frame(i, i * 0.01))
    await _turns()
    assert not task.done()
    buf.put(_frame(2, 0.02))
    assert [f.index for f in await asyncio.wait_for(task, 5)] == [0, 1, 2]
    assert buf.dropped == 0


async def test_the_end_wakes_the_reader_after_its_frames() -> None:
    buf = FrameBuffer(asyncio.get_running_loop(), capacity=8)
    task = await _waiting_reader(buf, 100.0)
    buf.put(_frame(0, 0.0))
    await _turns()
    assert not task.done()
    buf.close()
    assert [f.index for f in await asyncio.wait_for(task, 5)] == [0]
    try:
        await buf.get_due(None)
        raise AssertionError("a closed, empty buffer returned")
    except SourceClosed:
        pass


def _script() -> list[tuple[float, int]]:
    """(pts, dropped_before) of 300 frames at 25 fps with jitter in pts, a hole, time
    going back (a restart), a jump forward and a run of equal pts."""
    rng = random.Random(7)
    out = []
    for i in range(300):
        pts = i / 25 + rng.uniform(0, 0.01)
        if i >= 120:
            pts -= 4.0  # back
        if i >= 200:
            pts += 9.0  # a jump forward
        if 250 <= i < 256:
            pts = out[-1][0] if i > 250 else pts
        out.append((pts, 2 if i == 60 else 0))
    return out


class _ScriptSource:
    """Frames of :func:`_script` put by a thread into a real FrameBuffer, a few at a
    time; ``due`` chooses whether the reader has ``recv_due``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, due: bool) -> None:
        self.description = "script"
        self.buffer = FrameBuffer(loop, capacity=64, policy=DropPolicy.BLOCK)
        if due:
            self.recv_due = self.buffer.get_due
        self._thread = threading.Thread(target=self._produce, daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        for i, (pts, dropped) in enumerate(_script()):
            self.buffer.put(_frame(i, pts, dropped))
            if i % 3 == 0:
                time.sleep(0.002)  # the reader catches up and waits
        self.buffer.close()

    async def recv(self) -> SourceFrame:
        return await self.buffer.get()

    async def aclose(self) -> None:
        self.buffer.close()


class _Engine:
    def __init__(self) -> None:
        self.samples: list[EngineSample] = []

    def submit(self, sample: EngineSample) -> bool:
        self.samples.append(sample)
        return True

    def counts(self, stream_id: str) -> Any:
        return None


def _reference() -> list[tuple[int, int, float, int, bool]]:
    """The sampler over every frame, as the stream task runs it: a hole ends the window,
    then push; a gap the sampler found itself is only counted (the frame that found it
    anchors the new segment's grid)."""
    sampler: LiveSampler[int] = LiveSampler(0.5)
    out = []
    for i, (pts, dropped) in enumerate(_script()):
        if dropped:
            sampler.gap()
        _, samples = sampler.push(i, pts)
        for r in samples:
            out.append((r.segment, r.k, r.time_s, r.frame, r.repeated))
    return out


async def test_the_stream_task_makes_the_same_samples_reading_per_sample_or_per_frame() -> None:
    settings = ServeSettings(persist_streams=False)
    got = {}
    for due in (False, True):
        engine = _Engine()
        runner = StreamRunner(cast(Engine, engine), settings, None, 0, 1 << 20,
                              random.Random(0), time.time)
        st = ManagedStream(StreamSpec(id="s", url="x://s"), "x", 1,
                           AlertTracker("s", 0.8, 0.6, 0.0))
        st.sampler = LiveSampler(0.5)
        source = _ScriptSource(asyncio.get_running_loop(), due)
        await asyncio.wait_for(runner._consume(st, source), 30)
        got[due] = [(s.segment, s.k, s.time_s, cast(SourceFrame, s.frame).index, s.repeated)
                    for s in engine.samples]
        assert st.status.frames == 300 and st.status.frames_dropped == 2
        assert st.status.samples == len(engine.samples)
        assert st.status.gaps == {"drop": 1, "pts_backwards": 1, "pts_jump": 1}
    assert got[True] == got[False] == _reference()
    assert len(got[True]) > 3 / SAMPLE_INTERVAL_S


async def test_a_cancelled_wait_loses_no_frame_and_its_late_wake_up_is_harmless() -> None:
    """A read cancelled while it waits (a stall, a stop) takes no frame; the wake-up the
    frame after it scheduled still runs (on the cancelled wait) and the next read gets
    every frame; a wake-up that finds no reader waiting is a no-op."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
    buf = FrameBuffer(loop, capacity=8)
    task = await _waiting_reader(buf, 0.1)
    buf.put(_frame(0, 0.12))  # wakes the reader: the wake-up is on its way
    task.cancel()
    await _turns()
    assert task.cancelled()
    assert len(buf) == 1
    buf.close()  # a wake-up with nobody waiting
    await _turns()
    assert [f.index for f in await asyncio.wait_for(buf.get_due(0.2), 5)] == [0]
    with pytest.raises(SourceClosed):
        await asyncio.wait_for(buf.get_due(0.2), 5)
    assert errors == []  # no wake-up failed on the loop


async def test_a_reader_woken_for_nothing_waits_again() -> None:
    """A wake-up left over from a read that already returned (its frames came another way)
    wakes the next read for nothing: it finds the buffer empty and waits again."""
    loop = asyncio.get_running_loop()
    buf = FrameBuffer(loop, capacity=8)
    task = await _waiting_reader(buf, None)
    buf.put(_frame(0, 0.0))  # schedules the wake-up of this read
    buf.close()  # schedules another
    got = await asyncio.wait_for(task, 5)
    assert [f.index for f in got] == [0]
    buf2 = FrameBuffer(loop, capacity=8)
    reader = await _waiting_reader(buf2, None)
    buf2._wakeup.set()  # spurious: nothing buffered
    await _turns()
    assert not reader.done()
    buf2.put(_frame(1, 0.0))
    assert [f.index for f in await asyncio.wait_for(reader, 5)] == [1]


class _RefusingEngine(_Engine):
    """Refuses the samples whose ``k`` is in ``refuse`` (as a yielding stream's), counting
    them as the engine's plain fields do."""

    def __init__(self, refuse: set[int]) -> None:
        super().__init__()
        self.refuse = refuse
        self.refused = 0

    def submit(self, sample: EngineSample) -> bool:
        if sample.segment == 0 and sample.k in self.refuse:
            self.refused += 1
            return False
        return super().submit(sample)

    def counts(self, stream_id: str) -> Any:
        return StreamCounts(windows_skipped=self.refused, windows_yielded=self.refused,
                            frames_dropped=self.refused, yielding=True, priority=0)


async def test_refused_samples_count_on_the_status_and_reach_no_sample_callback() -> None:
    """A sample the engine refuses counts as dropped on the status, with the engine's
    counts copied (yielding shown); the next accepted one clears ``yielding``; only
    accepted samples reach ``on_sample`` (evidence)."""
    engine = _RefusingEngine({5, 6, 7})
    seen: list[EngineSample] = []
    runner = StreamRunner(cast(Engine, engine), ServeSettings(persist_streams=False), None,
                          0, 1 << 20, random.Random(0), time.time, on_sample=seen.append)
    st = ManagedStream(StreamSpec(id="s", url="x://s"), "x", 1,
                       AlertTracker("s", 0.8, 0.6, 0.0))
    st.sampler = LiveSampler(0.5)
    loop = asyncio.get_running_loop()
    buf = FrameBuffer(loop, capacity=64, policy=DropPolicy.BLOCK)

    class _Source:
        description = "refused"
        recv_due = buf.get_due

        async def recv(self) -> SourceFrame:
            return await buf.get()

        async def aclose(self) -> None:
            buf.close()

    for i in range(12):  # 0.0 .. 0.44 s: samples k = 0..5 of segment 0
        buf.put(_frame(i, i * 0.04))
    task = asyncio.create_task(runner._consume(st, _Source()))
    await _turns(20)
    assert [s.k for s in seen] == [0, 1, 2, 3, 4]
    assert st.status.frames_dropped == 1 and st.status.yielding
    assert st.status.windows_yielded == 1 == st.status.windows_skipped
    for i in range(12, 40):
        buf.put(_frame(i, i * 0.04))
    buf.close()
    await asyncio.wait_for(task, 5)
    assert seen == engine.samples
    assert [s.k for s in seen][5:8] == [8, 9, 10]
    assert st.status.frames_dropped == 3 and not st.status.yielding
    assert st.status.samples == len(seen) + 3
