"""One live stream's task: connect, read, sample, submit; reconnect with backoff.

Contract:

* :class:`StreamRunner` runs the task of one :class:`ManagedStream`: it opens
  the stream's source (the opener registered for its kind), reads frames, runs
  them through a :class:`~monitor.media.sampler.LiveSampler` and submits the samples
  to the :class:`~monitor.live.engine.Engine`. It never touches the desired set,
  leases or sinks; scores come back through the engine callback the stream
  manager registered.
* States: ``starting`` (opening), ``running`` (frames arriving), ``stalled``
  (no frame for ``stall_after_s``; the window ends), ``reconnecting`` (waiting
  out the backoff and reopening after a failure, or after ``stall_reconnect_s``
  without frames), ``paused``, ``stopped`` (removed, file ended, shutdown,
  handed over) and ``failed`` (a permanent error: unsupported, missing file,
  lost credentials).
* Reconnects wait :class:`~monitor.live.stream_state.Backoff` delays (full jitter
  between a floor and an exponential ceiling; the attempt count resets after a
  stable run). A stream's state (:class:`~monitor.live.stream_state.ManagedStream`,
  its :class:`~monitor.live.stream_state.StreamStatus`) is in :mod:`monitor.live.stream_state`.
* Any gap (reconnect, stall, dropped frames, a pts jump, a pause, an ownership
  change) ends the window; no window spans it. Every gap is counted by reason.
* Credentials: ``credentials_ref`` specs get user and password from settings at
  connect time (:func:`~monitor.live.stream_state.inject_credentials`); the URL with
  credentials is never
  logged, labelled or stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import traceback
from collections.abc import Callable

from ..config import ServeSettings
from ..errors import InputError
from ..media.sampler import LiveSampler
from ..media.sources import SourceContext, SourceError, opener_for
from ..media.sources.base import LiveSource, LoopWaker
from ..metrics import StreamMetrics, adder
from ..redaction import redact_text, redact_url
from ..types import SourceClosed
from .alerts import AlertEvent, StateEvent
from .batch import EngineSample
from .engine import Engine
from .stream_state import (
    Backoff,
    ManagedStream,
    awaiting_publisher,
    inject_credentials,
    watched,
)

log = logging.getLogger("restrav.streams")

class StreamRunner:
    """The task body of every stream, and the state/gap/error bookkeeping it shares."""

    def __init__(
        self,
        engine: Engine,
        settings: ServeSettings,
        metrics: StreamMetrics | None,
        decode_threads: int,
        max_pixels: int,
        rng: random.Random,
        clock: Callable[[], float],
        on_alert_event: Callable[[ManagedStream, AlertEvent], None] = lambda st, ev: None,
        on_sample: Callable[[EngineSample], None] | None = None,
        on_state_event: Callable[[ManagedStream, StateEvent], None] | None = None,
    ) -> None:
        self.engine = engine
        self.on_state_event = on_state_event
        """Called with every state change but to ``starting`` (a transition always followed
        by ``running``, ``reconnecting`` or ``failed``): the manager puts it on
        ``restrav:events``."""
        self.on_sample = on_sample
        """Called with every sample the engine accepted (evidence retention)."""
        self.on_alert_event = on_alert_event
        self.settings = settings
        self.metrics = metrics
        self.decode_threads = decode_threads
        self.max_pixels = max_pixels
        self.rng = rng
        self.clock = clock
        self._waker: LoopWaker | None = None  # one for all streams' frame buffers

    def start(self, st: ManagedStream) -> None:
        """Start the stream's task (state ``starting``)."""
        self.set_state(st, "starting")
        st.task = asyncio.create_task(self.run(st), name=f"stream:{st.spec.id}")

    async def cancel(self, st: ManagedStream) -> None:
        """Cancel the stream's task and wait until its source is closed."""
        await self.cancel_all([st])

    async def cancel_all(self, streams: list[ManagedStream]) -> None:
        """Cancel the tasks of ``streams`` all at once, then wait until every source is
        closed. One after the other, each wait took a few turns of the event loop, and a
        turn of a loop serving hundreds of streams past its capacity takes up to a
        second: shutting 256 streams down took minutes (BENCHMARKS.md, issue 25)."""
        tasks = []
        for st in streams:
            t, st.task = st.task, None
            if t is not None and not t.done():
                t.cancel()
                tasks.append(t)
        ends = await asyncio.gather(*tasks, return_exceptions=True)
        for end in ends:  # a bug (anything but the cancellation) propagates, as it did
            if isinstance(end, BaseException) and not isinstance(end, asyncio.CancelledError):
                raise end

    def set_state(self, st: ManagedStream, state: str, end_reason: str | None = None) -> None:
        """Record a state transition (status, history, metrics, log). Entering an
        unwatched state ends an active alert with ``end_reason`` (``deleted``,
        ``shutdown``...), by default the state itself (``no_publisher`` for WHIP)."""
        if st.status.state == state and st.status.history:
            return
        now = self.clock()
        previous = st.status.state if st.status.history else None
        st.status.state = state
        st.status.state_since = now
        st.status.history.append((state, now))
        del st.status.history[:-50]
        awaiting = awaiting_publisher(st)
        if self.metrics is not None:
            self.metrics.set_state(st.spec.id, state, awaiting_publisher=awaiting)
        if state == "failed":  # permanent: operators must hear it without -v, with the reason
            err = st.status.error or {}
            log.warning(
                "stream %s: failed (%s: %s)", st.spec.id, err.get("code", "unknown"),
                redact_text(str(err.get("message", "no reason recorded"))),
            )
        else:
            log.info("stream %s: %s", st.spec.id, state)
        if self.on_state_event is not None and state != "starting":  # always followed
            reason = end_reason if state == "stopped" else None
            if state == "failed":
                reason = str((st.status.error or {}).get("code", "unknown"))
            self.on_state_event(st, StateEvent(st.spec.id, state, now, previous, reason))
        if not watched(st):
            self.end_alert(st, end_reason or ("no_publisher" if awaiting else state))

    def end_alert(self, st: ManagedStream, reason: str) -> None:
        """An unwatched stream (paused, stopped, removed, failed, no publisher) is not in
        alert: reset its hysteresis; an active alert's ``alert_end`` goes to
        ``on_alert_event``."""
        event = st.tracker.reset(self.clock(), reason)
        st.status.alert_active = False
        if self.metrics is not None:
            self.metrics.alert_active.labels(st.spec.id).set(0.0)
        if event is not None:
            log.info("stream %s: alert ended (%s)", st.spec.id, reason)
            self.on_alert_event(st, event)

    def gap(self, st: ManagedStream, reason: str, end_window: bool = True) -> None:
        """End the stream's window (counted once per gap that interrupted samples).
        ``end_window=False`` only counts it: a gap the sampler found itself, whose frame
        already anchors the new segment's grid."""
        if end_window and st.sampler is not None:
            st.sampler.gap()
        st.status.gaps[reason] = st.status.gaps.get(reason, 0) + 1
        if self.metrics is not None:
            self.metrics.gaps.labels(st.spec.id, reason).inc()

    def error(self, st: ManagedStream, code: str, message: str) -> None:
        """Record a source error on the status (redacted) and count it."""
        st.status.error = {"code": code, "message": redact_text(message)}
        if self.metrics is not None:
            self.metrics.source_errors.labels(st.spec.id, code).inc()

    def _context(self, st: ManagedStream) -> SourceContext:
        url = st.spec.url
        if st.spec.credentials_ref is not None:
            cred = self.settings.credentials[st.spec.credentials_ref]
            url = inject_credentials(url, cred.username, cred.password.get_secret_value())
        if self._waker is None:
            self._waker = LoopWaker(asyncio.get_running_loop())
        return SourceContext(
            url=url,
            description=redact_url(st.spec.url),
            settings=self.settings.source,
            decode_threads=self.decode_threads,
            max_pixels=self.max_pixels,
            waker=self._waker,
        )

    async def run(self, st: ManagedStream) -> None:
        """The stream task: connect, read, reconnect with backoff, until cancelled or done."""
        s = self.settings.source
        backoff = Backoff(s.backoff.floor_s, s.backoff.cap_s, s.backoff.reset_after_s, self.rng)
        if st.sampler is None:
            st.sampler = LiveSampler(s.gap_tolerance_s)
        opener = opener_for(st.kind)
        first = True
        while True:
            if not first:
                self.set_state(st, "reconnecting")
                await asyncio.sleep(backoff.next_delay())
                st.status.reconnects += 1
                if self.metrics is not None:
                    self.metrics.reconnects.labels(st.spec.id).inc()
            else:
                self.set_state(st, "starting")
            first = False
            try:
                source = await opener(st.spec, self._context(st))
            except SourceError as exc:
                self.error(st, exc.code, exc.message)
                if exc.permanent:
                    self.set_state(st, "failed")
                    return
                log.warning("stream %s: %s", st.spec.id, redact_text(exc.message))
                continue
            except InputError as exc:
                self.error(st, exc.code, exc.message)
                self.set_state(st, "failed")
                return
            except Exception as exc:  # source reconnect loop boundary: log, count, retry
                log.exception("stream %s: opening the source failed unexpectedly", st.spec.id)
                self.error(st, "internal", f"{type(exc).__name__} while opening (see logs)")
                continue
            connected_at = time.monotonic()
            try:
                await self._consume(st, source)
                self.set_state(st, "stopped")  # the source ended for good (a file)
                return
            except SourceError as exc:
                if exc.expected:  # a normal end (a publisher's DELETE): no fault to show
                    st.status.error = None
                    log.info("stream %s: %s", st.spec.id, redact_text(exc.message))
                else:
                    self.error(st, exc.code, exc.message)
                    log.warning("stream %s: %s", st.spec.id, redact_text(exc.message))
                self.gap(st, "reconnect")
                _release(exc)
            except Exception as exc:  # source reconnect loop boundary: log, count, retry
                log.exception("stream %s: reading the source failed unexpectedly", st.spec.id)
                self.error(st, "internal", f"{type(exc).__name__} while reading (see logs)")
                self.gap(st, "reconnect")
                _release(exc)
            finally:
                with contextlib.suppress(Exception):  # closing must never mask the cause
                    await source.aclose()
            backoff.ran_for(time.monotonic() - connected_at)

    async def _consume(self, st: ManagedStream, source: LiveSource) -> None:
        """Read frames until the source ends (returns) or fails (SourceError).

        One await per frame, the source's own (``recv``), or per sample where the
        source has ``recv_due`` (the frames up to the one that closes the next sample
        time come at once): no task, no timer per frame (at 25 fps and hundreds of
        streams a task and an ``asyncio.wait`` per frame were a tenth of the event
        loop, a wake-up per frame most of the rest; BENCHMARKS.md, issue 25). Stalls
        are found by a watchdog timer that fires once per ``stall_after_s`` of the
        stream: it marks the stream stalled (the window ends) and, after
        ``stall_reconnect_s`` without a frame, ends the read (the pending ``recv`` is
        cancelled; sources lose no frame to a cancelled ``recv``) with a ``stalled``
        SourceError."""
        s = self.settings.source
        sampler = st.sampler
        assert sampler is not None
        m = self.metrics
        sid = st.spec.id
        # the stream's metric children, looked up once (a labels() call per frame and
        # per sample cost a lock and a dict lookup each)
        decoded = adder(m.frames_decoded.labels(sid)) if m is not None else None
        sampled = adder(m.frames_sampled.labels(sid)) if m is not None else None
        submit = self.engine.submit
        on_sample = self.on_sample  # evidence retention, when on
        status = st.status
        loop = asyncio.get_running_loop()
        watch = _StallWatch(self, st, loop, s.stall_after_s, s.stall_reconnect_s)
        # a source with recv_due hands over the frames between two samples with the
        # frame after them: one wake-up per sample, not per frame (BENCHMARKS.md, issue 25)
        recv_due = getattr(source, "recv_due", None)
        try:
            async with asyncio.timeout(None) as deadline:
                watch.start(deadline)
                while True:
                    try:
                        if recv_due is not None:
                            frames = await recv_due(sampler.next_time_s)
                        else:
                            frames = [await source.recv()]
                    except SourceClosed:
                        return
                    watch.last_frame = time.monotonic()
                    if status.state != "running":
                        self.set_state(st, "running")
                        status.error = None
                    watch.stalled = False
                    status.frames += len(frames)
                    if decoded is not None:
                        decoded(len(frames))
                    n = 0
                    for frame in frames:
                        if frame.dropped_before:
                            status.frames_dropped += frame.dropped_before
                            if m is not None:
                                m.frames_dropped.labels(sid, "buffer_full").inc(
                                    frame.dropped_before)
                            self.gap(st, "drop")
                        reason, samples = sampler.push(frame, frame.pts_s)
                        if reason is not None:  # the frame that found it starts the next
                            self.gap(st, reason, end_window=False)
                        n += len(samples)
                        for r in samples:
                            # positional: a frozen dataclass's keyword call costs more
                            sample = EngineSample(sid, r.segment, r.k, r.time_s, r.frame,
                                                  r.frame.arrival_s, r.repeated)
                            if not submit(sample):
                                _refused(self.engine, st)
                                continue
                            if on_sample is not None:
                                on_sample(sample)
                            if status.yielding:
                                status.yielding = False
                    if n:  # one count per read, not per sample
                        status.samples += n
                        if sampled is not None:
                            sampled(n)
        except TimeoutError:
            if not watch.expired:
                raise
            idle = time.monotonic() - watch.last_frame
            raise SourceError(
                f"{source.description}: no frame for {idle:.1f} s", code="stalled"
            ) from None
        finally:
            watch.stop()


class _StallWatch:
    """The stall watchdog of one connection (see :meth:`StreamRunner._consume`): a timer
    that re-arms itself from the last frame's time, so that frames cost no timer."""

    def __init__(self, runner: StreamRunner, st: ManagedStream,
                 loop: asyncio.AbstractEventLoop, after_s: float, reconnect_s: float) -> None:
        self.runner = runner
        self.st = st
        self.loop = loop
        self.after_s = after_s
        self.reconnect_s = reconnect_s
        self.last_frame = time.monotonic()
        self.stalled = False
        self.expired = False
        self._deadline: asyncio.Timeout | None = None
        self._timer: asyncio.TimerHandle | None = None

    def start(self, deadline: asyncio.Timeout) -> None:
        """Watch from now; ``deadline`` ends the read when the stream must reconnect."""
        self._deadline = deadline
        self._arm(self.after_s)

    def _arm(self, delay_s: float) -> None:
        self._timer = self.loop.call_later(max(0.0, delay_s), self._check)

    def _check(self) -> None:
        idle = time.monotonic() - self.last_frame
        if not self.stalled and idle >= self.after_s:
            self.stalled = True
            self.runner.set_state(self.st, "stalled")
            self.runner.gap(self.st, "stall")
        if idle >= self.reconnect_s:
            self.expired = True
            assert self._deadline is not None
            self._deadline.reschedule(self.loop.time())  # the read ends now
            return
        # the next check: when the stream would stall, or must reconnect
        self._arm((self.reconnect_s if self.stalled else self.after_s) - idle)

    def stop(self) -> None:
        """No more checks (the read ended)."""
        if self._timer is not None:
            self._timer.cancel()


def _refused(engine: Engine, st: ManagedStream) -> None:
    """A sample the engine refused counts on the status (the caller counts the samples)."""
    status = st.status
    # plain fields of the engine, O(1): reading the counter back from the registry
    # scanned every metric (ms at hundreds of streams, on every refused sample) and
    # collapsed the loop
    status.frames_dropped += 1
    counts = engine.counts(st.spec.id)
    if counts is not None:
        status.windows_skipped = counts.windows_skipped
        status.windows_yielded = counts.windows_yielded
        status.yielding = counts.yielding


def _release(exc: BaseException) -> None:
    """Clear the locals of the finished frames in ``exc``'s traceback.

    The error of a dead connection is held by its source's buffer and by the
    recv task, and its traceback holds ``_consume``'s frame, whose locals hold
    that task, the source and the last frame: a reference cycle that kept each
    connection's decoder and scaler threads, frame buffers and sockets alive
    until the cyclic garbage collector happened to run (threads and RSS grew
    with every reconnect). Clearing the frames breaks the cycle at once.
    """
    traceback.clear_frames(exc.__traceback__)
