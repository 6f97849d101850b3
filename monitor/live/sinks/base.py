"""The sink contract and a buffered writer base.

A sink receives scores and alert events without ever blocking the engine::

    sink.publish(score)        # non-blocking: into a bounded buffer
    sink.publish_many(scores)  # the same for each, in order (one wake-up per batch)
    sink.publish_event(event)
    await sink.start()         # starts its writer task
    await sink.flush(timeout)  # waits until the buffer is written (True) or time is up
    await sink.aclose()        # flushes what it can, stops

:class:`BufferedSink` keeps a bounded buffer (oldest dropped when full, counted
in ``restrav_sink_dropped_total{reason="buffer_full"}``) and a writer task that
writes in batches; when the backend is down (:class:`SinkUnavailable`) the
batch stays buffered and is retried with exponential backoff, so an outage
delays scores but never stops scoring. End-to-end latency (frame arrival to
score written) is observed here, after each successful write.

Any other exception from :meth:`BufferedSink.write` (a command the backend
rejects, a bug) is treated the same way: the batch is kept and retried, and
the sink is not :attr:`~BufferedSink.available` until a write succeeds. It is
also logged with its traceback once per kind (exception type) until a write
succeeds again, and counted in ``restrav_sink_writes_total{outcome="failed"}``
(``"error"`` counts outages). The writer task only ends when the sink is
closed; should it end any other way, it is logged and the sink reports itself
unavailable, so a ready check (:func:`sink_ready_check`) never reports a dead
writer as ready.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from ...metrics import StreamMetrics
from ...types import StreamScore
from ..alerts import Event

log = logging.getLogger("restrav.sinks")

Item = StreamScore | Event


class SinkUnavailable(Exception):
    """The sink's backend cannot be reached now; the batch will be retried."""


class PartlyWritten(Exception):
    """Raised by :meth:`BufferedSink.write` when part of a batch was written: only
    ``unwritten`` is kept and retried; ``cause`` is handled as if the write had raised
    it (an outage when it is :class:`SinkUnavailable`, else a failure)."""

    def __init__(self, unwritten: list[Item], cause: Exception) -> None:
        super().__init__(f"{len(unwritten)} item(s) not written: {cause!r}")
        self.unwritten = unwritten
        self.cause = cause


@runtime_checkable
class Sink(Protocol):
    """Where scores and events go (see the module docstring)."""

    name: str

    def publish(self, score: StreamScore) -> None:
        """Queue one score (never blocks)."""
        ...

    def publish_many(self, scores: Sequence[StreamScore]) -> None:
        """Queue scores in order, as :meth:`publish` of each would (never blocks)."""
        ...

    def publish_event(self, event: Event) -> None:
        """Queue one event: an alert's, or who changed a stream (never blocks)."""
        ...

    async def start(self) -> None:
        """Start writing."""
        ...

    async def flush(self, timeout_s: float) -> bool:
        """Wait until everything queued is written; False if time ran out."""
        ...

    async def aclose(self) -> None:
        """Stop writing (after a flush attempt)."""
        ...


class BufferedSink:
    """Bounded buffer + writer task; subclasses implement :meth:`write`."""

    name = "buffered"

    def __init__(
        self,
        buffer_max: int = 10_000,
        write_batch: int = 256,
        metrics: StreamMetrics | None = None,
        retry_floor_s: float = 0.2,
        retry_cap_s: float = 5.0,
    ) -> None:
        self.buffer_max = buffer_max
        self.write_batch = write_batch
        self.metrics = metrics
        self.retry_floor_s = retry_floor_s
        self.retry_cap_s = retry_cap_s
        self._buf: collections.deque[Item] = collections.deque()
        self._wake = asyncio.Event()
        self._close_event = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.dropped = 0
        self.written = 0
        self.available = True
        self.last_error = ""
        """Why the last write failed (empty after a successful one)."""
        self._logged_failures: set[str] = set()  # kinds logged since the last good write
        # looked up once: _put runs for every score
        self._m_buffered = metrics.sink_buffered.labels(self.name) if metrics else None
        # each stream's e2e latency child, looked up once (a labels() call per score
        # otherwise); the registry keeps these children for good (forget_stream drops
        # gauges only), so a cached one is never one the exposition has dropped
        self._m_e2e: dict[str, Any] = {}

    # -- subclass API
    async def write(self, items: list[Item]) -> None:
        """Write a batch; raise :class:`SinkUnavailable` to retry it later, or
        :class:`PartlyWritten` to retry only what was not written."""
        raise NotImplementedError

    # -- producer side
    def _append(self, item: Item) -> None:
        if len(self._buf) >= self.buffer_max:
            self._buf.popleft()
            self.dropped += 1
            if self.metrics is not None:
                self.metrics.sink_dropped.labels(self.name, "buffer_full").inc()
        self._buf.append(item)

    def _queued(self) -> None:
        """Wake the writer and set the buffered gauge, after items were appended."""
        self._idle.clear()
        self._wake.set()
        if self._m_buffered is not None:
            self._m_buffered.set(len(self._buf))

    def _put(self, item: Item) -> None:
        self._append(item)
        self._queued()

    def publish(self, score: StreamScore) -> None:
        """Queue one score."""
        self._put(score)

    def publish_many(self, scores: Sequence[StreamScore]) -> None:
        """Queue scores in order: the same buffer, drops and counts as :meth:`publish` of
        each, with one wake-up and one gauge update for all of them."""
        if not scores:
            return
        if len(self._buf) + len(scores) <= self.buffer_max:
            self._buf.extend(scores)
        else:
            for sc in scores:
                self._append(sc)
        self._queued()

    def publish_event(self, event: Event) -> None:
        """Queue one event."""
        self._put(event)

    @property
    def buffered(self) -> int:
        """Items waiting to be written."""
        return len(self._buf)

    # -- writer
    async def start(self) -> None:
        """Start the writer task."""
        if self._task is None:
            self._task = asyncio.create_task(self._writer(), name=f"sink:{self.name}")
            self._task.add_done_callback(self._writer_ended)

    def _writer_ended(self, task: asyncio.Task[None]) -> None:
        """A writer that ends before :meth:`aclose` is a bug: log it, report unavailable."""
        if self._closing:
            return
        exc = None if task.cancelled() else task.exception()
        self.available = False
        self.last_error = f"writer stopped ({type(exc).__name__ if exc else 'cancelled'})"
        log.error("sink %s: writer task stopped; nothing more is written", self.name,
                  exc_info=exc)

    @property
    def writing(self) -> bool:
        """True while the writer task runs (started and not ended)."""
        return self._task is not None and not self._task.done()

    async def _writer(self) -> None:
        delay = self.retry_floor_s
        m = self.metrics
        while True:
            if not self._buf:
                self._idle.set()
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._buf.popleft() for _ in range(min(self.write_batch, len(self._buf)))]
            t0 = time.monotonic()
            try:
                await self.write(batch)
            # sink writer boundary (sanctioned): whatever a write raises, the batch is kept,
            # retried, logged once per kind and counted; the writer never dies of it
            except Exception as exc:  # noqa: BLE001 - logged by _write_failed
                if isinstance(exc, PartlyWritten):
                    kept = set(map(id, exc.unwritten))
                    self._written([it for it in batch if id(it) not in kept], t0)
                    batch, exc = exc.unwritten, exc.cause
                self._write_failed(batch, exc)
                if self._closing:
                    self._idle.set()
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._close_event.wait(), delay)
                delay = min(self.retry_cap_s, delay * 2)
                continue
            if not self.available:
                # the batch just written counts: it was buffered during the outage
                log.warning("sink %s available again; flushing %d", self.name,
                            len(batch) + len(self._buf))
            self.available = True
            self.last_error = ""
            self._logged_failures.clear()
            delay = self.retry_floor_s
            self._written(batch, t0)
            if m is not None:
                m.sink_writes.labels(self.name, "ok").inc()
                m.sink_buffered.labels(self.name).set(len(self._buf))

    def _written(self, items: list[Item], t0: float) -> None:
        """Count ``items`` as written by a write begun at ``t0``: their latency observed."""
        self.written += len(items)
        m = self.metrics
        if m is None or not items:
            return
        now = time.monotonic()
        m.stage_latency.labels("sink").observe(now - t0)
        e2e = self._m_e2e
        for it in items:
            if isinstance(it, StreamScore):
                h = e2e.get(it.stream_id)
                if h is None:
                    h = e2e[it.stream_id] = m.e2e_latency.labels(it.stream_id)
                h.observe(max(0.0, now - it.arrival_s))

    def _write_failed(self, batch: list[Item], exc: Exception) -> None:
        """Keep ``batch`` for a retry (bounded, oldest dropped), log and count ``exc``."""
        m = self.metrics
        # put the batch back in front; what no longer fits is the oldest: dropped
        self._buf.extendleft(reversed(batch))
        while len(self._buf) > self.buffer_max:
            self._buf.popleft()
            self.dropped += 1
            if m is not None:
                m.sink_dropped.labels(self.name, "buffer_full").inc()
        if m is not None:
            m.sink_buffered.labels(self.name).set(len(self._buf))
        outage = isinstance(exc, SinkUnavailable)
        kind = "unavailable" if outage else type(exc).__name__
        self.last_error = f"unavailable ({exc})" if outage else f"write failed ({kind})"
        if kind not in self._logged_failures:  # once per kind until a write succeeds
            self._logged_failures.add(kind)
            if outage:
                log.warning("sink %s unavailable (%s); buffering", self.name, exc)
            else:
                log.error("sink %s: write failed (%s); keeping %d items and retrying",
                          self.name, kind, len(self._buf), exc_info=exc)
        if m is not None:
            m.sink_writes.labels(self.name, "error" if outage else "failed").inc()
        self.available = False

    async def flush(self, timeout_s: float) -> bool:
        """Wait until the buffer is empty; False on timeout."""
        if self._task is None:
            return not self._buf
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return not self._buf

    async def aclose(self) -> None:
        """Stop the writer (one last attempt for what is buffered)."""
        self._closing = True
        self._close_event.set()
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 2.0)
            except TimeoutError:
                self._task.cancel()
            self._task = None


def sink_ready_check(sink: BufferedSink) -> Callable[[], Awaitable[tuple[bool, str]]]:
    """A /readyz check: not ready while ``sink``'s last write failed (it is buffering)
    or its writer has stopped; the reason names the failure and the items buffered."""

    async def check() -> tuple[bool, str]:
        if sink.available:
            return True, ""
        return False, f"{sink.name} {sink.last_error or 'cannot write'}; {sink.buffered} buffered"

    return check
