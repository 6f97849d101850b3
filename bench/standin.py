"""Stand-ins of known cost for benchmarks and tests: a backbone and a live source.

They live in the benchmark layer (tests import them from here): the service knows
nothing of them. ``serve`` takes any :class:`~monitor.live.conversion.TensorEmbedder`
(``workers.serve_cmd.serve(..., embedder=...)``) and any registered source kind, so a
simulation swaps only what needs a GPU (decode and the model) and drives the rest of
the real service.

Contract:

* :class:`StandInEmbedder` fits :class:`~monitor.live.conversion.TensorEmbedder`: one call
  for ``n`` frames sleeps ``fixed_s + n * per_sample_s`` (the GIL is released, as
  while a GPU computes) and returns ``(n, dim)`` float32 embeddings drawn from a
  seeded generator (distinct, so that every step and angle is defined). It measures
  the engine, not a model. :data:`H100_MODELS` holds ``(fixed_s, per_sample_s)`` fitted
  to the H100 forward-pass figures in BENCHMARKS.md.
* :class:`StillFrame` is a frame for samples submitted directly to the engine.
* :class:`SyntheticSource` is a live source of ``size`` x ``size`` RGB frames at
  ``fps`` in real time (``synth://NAME?fps=25&size=16&jitter_ms=5&burst_every_s=4&
  burst_ms=200&phase=1``): frame ``i`` has pts ``i / fps`` and is due at
  ``t0 + i / fps`` (plus a uniform delivery jitter of up to ``jitter_ms``, and held
  back in a burst for ``burst_ms`` every ``burst_every_s``, as a network hands over a
  stalled buffer); ``phase=1`` (the default) starts each stream at a random offset
  within one frame interval, seeded by its name, so that streams do not all tick at
  once. Frame times follow the source clock even when the event loop lags: it then
  hands over the frames it owes at once, as a decoder's buffer would, and, like
  :class:`~monitor.media.sources.base.FrameBuffer` (keep the latest), only the last
  ``buffer_frames`` of them (``serve.source.buffer_frames``); the frame after a hole
  carries ``dropped_before``.
  Opened as a stream (``synth://``), its frames are delivered as a decoder's are:
  a :class:`DecoderClock` (one timer per event loop, every ``tick_s``) puts the
  frames due into each source's real :class:`~monitor.media.sources.base.FrameBuffer`
  (keep the latest ``serve.source.buffer_frames``; the frame after a hole carries
  ``dropped_before``) and ``recv`` is the buffer's ``get``, so the event loop pays
  what it pays for a real source (``delivery=sleep``: one ``asyncio.sleep`` per
  frame instead, and no buffer unless ``buffer_frames`` is given; ``delivery=thread``:
  a thread puts each frame at its own time, as decode threads do, see
  :class:`DecoderClock`).
  :func:`register_synthetic_source` registers it as kind ``synthetic`` (scheme
  ``synth``); nothing is registered at import. Decode is not modelled: a frame
  costs the service nothing until it is sampled.
"""

from __future__ import annotations

import asyncio
import heapq
import random
import threading
import time
import zlib
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import torch

from monitor.config import StreamSpec
from monitor.media.sources.base import (
    DropPolicy,
    FrameBuffer,
    LoopWaker,
    SourceContext,
    SourceFrame,
    register_source_kind,
)
from monitor.types import SourceClosed

H100_MODELS: dict[str, tuple[float, float]] = {
    # least squares over batch 8 / 24 / 64 of the bare forward pass, ViT-S/14 at 224 px
    # (BENCHMARKS.md, "GPU: NVIDIA H100"): 5.41 / 11.73 / 24.01 ms
    "float32": (0.00324, 0.000327),
    # bfloat16, over batch 24 / 64 (batch 8, 6.3 ms, is launch-bound): 4.37 / 5.07 ms
    "bfloat16": (0.00396, 0.0000173),
}
"""``(fixed_s, per_sample_s)`` per batch: t = a + b * n, the H100's forward pass."""


class StandInEmbedder:
    """A backbone of known cost (see the module docstring)."""

    def __init__(self, fixed_s: float = 0.002, per_sample_s: float = 1 / 12_000,
                 dim: int = 64, seed: int = 0) -> None:
        self.fixed_s = fixed_s
        self.per_sample_s = per_sample_s
        self._dim = dim
        self._gen = torch.Generator().manual_seed(seed)
        self._lock = threading.Lock()
        self.calls = 0

    @property
    def embedding_dim(self) -> int:
        """D."""
        return self._dim

    @property
    def device(self) -> torch.device:
        """Always the CPU (the cost is simulated)."""
        return torch.device("cpu")

    def embed_tensor(self, frames: Sequence[Any]) -> torch.Tensor:
        """Sleep the batch's cost; ``(n, dim)`` random embeddings."""
        n = len(frames)
        time.sleep(self.fixed_s + n * self.per_sample_s)
        with self._lock:
            self.calls += 1
            return torch.randn(n, self._dim, generator=self._gen)


class StillFrame:
    """One black ``size`` x ``size`` RGB frame for :class:`~monitor.live.batch.EngineSample`
    (conversion costs nothing: the engine is measured, not the pixels)."""

    def __init__(self, size: int = 16) -> None:
        self.image = np.zeros((size, size, 3), dtype=np.uint8)

    def rgb(self) -> Any:
        """The pixels."""
        return self.image

    def planes(self) -> None:
        """No planes: the engine uses :meth:`rgb`."""
        return None


def _rgb(image: Any) -> Any:
    return image


class DecoderClock:
    """Delivers the frames of every clocked :class:`SyntheticSource` of one event loop:
    every ``tick_s`` the frames due go into their sources' buffers (one timer for all
    streams, as decode threads hand over frames; see the module docstring).

    ``threaded=True``: one thread (``synth-decode``) instead of the loop's timer puts
    each source's frames at their own due times, as a decode thread per stream would
    (a frame may then wake the loop from its sleep, where the loop's own tick hands
    over all the frames of 5 ms in the one turn it runs anyway)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, tick_s: float = 0.005,
                 threaded: bool = False) -> None:
        self.loop = loop
        self.tick_s = tick_s
        self.threaded = threaded
        self.sources: dict[int, SyntheticSource] = {}
        self.waker = LoopWaker(loop)  # as serve shares one among its streams' buffers
        self._timer: asyncio.TimerHandle | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        # the loop's tick: each source's next due time, earliest first (a source is
        # visited when a frame of it is due, not every tick)
        self._heap: list[tuple[float, int, SyntheticSource]] = []
        self._queued: set[int] = set()
        self._entries = 0
        self.cpu_s = 0.0
        """CPU time its ticks took (thread time): what the stand-in decoders cost the
        event loop, which real decode threads would pay in their own threads (threaded:
        the thread's own CPU time)."""

    def add(self, src: SyntheticSource) -> None:
        """Deliver ``src``'s frames from now on."""
        with self._lock:
            self.sources[id(src)] = src
        if not self.threaded:
            self._queue(src)
        if self.threaded:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="synth-decode",
                                                daemon=True)
                self._thread.start()
        elif self._timer is None:
            self._timer = self.loop.call_later(self.tick_s, self._tick)

    def remove(self, src: SyntheticSource) -> None:
        """Stop delivering ``src``'s frames."""
        with self._lock:
            self.sources.pop(id(src), None)

    def _queue(self, src: SyntheticSource) -> None:
        """Put ``src``'s next due time in the tick's heap (once: a source has one entry)."""
        if id(src) not in self._queued and not src.ended:
            self._queued.add(id(src))
            self._entries += 1
            heapq.heappush(self._heap, (src.next_due(), self._entries, src))

    def _tick(self) -> None:
        """Deliver the frames due by now: the sources whose next frame is due, from the
        heap; a removed source's entry is dropped when it comes up."""
        cpu0 = time.thread_time()
        now = time.monotonic()
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, src = heapq.heappop(heap)
            self._queued.discard(id(src))
            if self.sources.get(id(src)) is src:
                src.deliver(now)
                self._queue(src)
        self._timer = (self.loop.call_later(self.tick_s, self._tick) if self.sources
                       else None)
        self.cpu_s += time.thread_time() - cpu0

    def _run(self) -> None:
        """The decode thread: each source's next frame at its due time, earliest first."""
        cpu0 = time.thread_time()
        heap: list[tuple[float, int]] = []
        known: set[int] = set()
        while not self.loop.is_closed():
            with self._lock:
                if not self.sources:
                    break
                for key, src in self.sources.items():
                    if key not in known:
                        known.add(key)
                        heapq.heappush(heap, (src.next_due(), key))
            if not heap:
                time.sleep(self.tick_s)
                continue
            due, key = heap[0]
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, self.tick_s))
                self.cpu_s = time.thread_time() - cpu0
                continue
            heapq.heappop(heap)
            got = self.sources.get(key)
            if got is None:
                known.discard(key)
                continue
            got.deliver(time.monotonic())
            heapq.heappush(heap, (got.next_due(), key))
            self.cpu_s = time.thread_time() - cpu0


_CLOCKS: dict[tuple[asyncio.AbstractEventLoop, bool], DecoderClock] = {}


def decoder_clock(threaded: bool = False) -> DecoderClock:
    """The running loop's :class:`DecoderClock` (the threaded one: ``threaded``)."""
    loop = asyncio.get_running_loop()
    for old in [k for k in _CLOCKS if k[0].is_closed()]:
        del _CLOCKS[old]
    if (loop, threaded) not in _CLOCKS:
        _CLOCKS[(loop, threaded)] = DecoderClock(loop, threaded=threaded)
    return _CLOCKS[(loop, threaded)]


class SyntheticSource:
    """Frames at ``fps`` in real time (see the module docstring)."""

    def __init__(self, description: str, fps: float, size: int, frames: int = 0,
                 jitter_s: float = 0.0, burst_every_s: float = 0.0, burst_s: float = 0.0,
                 phase: bool = False, buffer_frames: int = 0) -> None:
        self.description = description
        self.fps = fps
        self.frames = frames  # 0: endless
        self.jitter_s = jitter_s
        self.burst_every_s = burst_every_s
        self.burst_s = burst_s
        self._rng = random.Random(zlib.crc32(description.encode()))
        self._image = np.zeros((size, size, 3), dtype=np.uint8)
        self._t0 = time.monotonic() + (self._rng.random() / fps if phase else 0.0)
        self.buffer_frames = buffer_frames  # 0: unbounded
        self._i = 0
        self._due = (-1, 0.0)  # (frame, its due time): drawn once per frame
        self._closed = False
        self._clock: DecoderClock | None = None
        self._buffer: FrameBuffer | None = None

    def clocked(self, clock: DecoderClock) -> SyntheticSource:
        """Have ``clock`` deliver the frames into a FrameBuffer (see the module docstring)."""
        self._clock = clock
        self._buffer = FrameBuffer(clock.loop, max(1, self.buffer_frames or 8),
                                   DropPolicy.KEEP_LATEST, clock.waker)
        clock.add(self)
        return self

    @property
    def ended(self) -> bool:
        """True once every frame of a finite source was handed over."""
        return bool(self.frames) and self._i >= self.frames

    def next_due(self) -> float:
        """When the next frame is handed over (:meth:`due`, drawn once per frame)."""
        if self._due[0] != self._i:
            self._due = (self._i, self.due(self._i))
        return self._due[1]

    def deliver(self, now: float) -> None:
        """Put the frames due by ``now`` into the buffer (the clock's tick)."""
        assert self._buffer is not None
        while not self.ended and self.next_due() <= now:
            i = self._i
            self._i += 1
            self._buffer.put(SourceFrame(pts_s=i / self.fps, arrival_s=now, index=i,
                                         image=self._image, to_rgb=_rgb))
        if self.ended:
            self._buffer.close()

    @classmethod
    async def open(cls, spec: StreamSpec, ctx: SourceContext) -> SyntheticSource:
        """The source of ``spec`` (query: ``fps``, ``size``, ``frames``, ``jitter_ms``,
        ``burst_every_s``, ``burst_ms``, ``phase``)."""
        q = {k: v[0] for k, v in parse_qs(urlsplit(spec.url).query).items()}
        src = cls(ctx.description, float(q.get("fps", "11.5")), int(q.get("size", "32")),
                  int(q.get("frames", "0")), float(q.get("jitter_ms", "0")) / 1000,
                  float(q.get("burst_every_s", "0")), float(q.get("burst_ms", "0")) / 1000,
                  q.get("phase", "1") == "1", ctx.settings.buffer_frames)
        if q.get("delivery") == "sleep":
            return src
        return src.clocked(decoder_clock(threaded=q.get("delivery") == "thread"))

    def due(self, i: int) -> float:
        """When frame ``i`` is handed over (monotonic seconds)."""
        t = self._t0 + i / self.fps
        if self.jitter_s:
            t += self._rng.random() * self.jitter_s
        if self.burst_every_s and self.burst_s:
            # frames of the first burst_s of each period are held to its end
            into = (t - self._t0) % self.burst_every_s
            if into < self.burst_s:
                t += self.burst_s - into
        return t

    async def recv_due(self, next_pts_s: float | None) -> list[SourceFrame]:
        """The buffered frames once one may close ``next_pts_s`` (clocked delivery: the
        buffer's ``get_due``); one frame as :meth:`recv` otherwise."""
        if self._buffer is not None:
            if self._closed:
                raise SourceClosed(self.description)
            return await self._buffer.get_due(next_pts_s)
        return [await self.recv()]

    async def recv(self) -> SourceFrame:
        """The next frame, at its time on the source clock."""
        if self._buffer is not None:
            if self._closed:
                raise SourceClosed(self.description)
            return await self._buffer.get()
        if self._closed or (self.frames and self._i >= self.frames):
            raise SourceClosed(self.description)
        now = time.monotonic()
        wait = self.due(self._i) - now
        if wait > 0:
            await asyncio.sleep(wait)
        dropped = 0
        if self.buffer_frames:
            # frames due by now beyond the buffer's capacity were dropped (oldest first)
            owed = int((now - self._t0) * self.fps) + 1 - self._i
            dropped = max(0, owed - self.buffer_frames)
        i = self._i + dropped
        self._i = i + 1
        return SourceFrame(pts_s=i / self.fps, arrival_s=time.monotonic(), index=i,
                           image=self._image, to_rgb=_rgb, dropped_before=dropped)

    async def aclose(self) -> None:
        """Stop (idempotent)."""
        self._closed = True
        if self._clock is not None:
            self._clock.remove(self)
        if self._buffer is not None:
            self._buffer.close()


def register_synthetic_source() -> None:
    """Make kind ``synthetic`` (``synth://`` URLs) available to stream specs."""
    register_source_kind("synthetic", SyntheticSource.open, ("synth",))
