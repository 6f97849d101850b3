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
* Reconnects wait :class:`Backoff` delays (full jitter between a floor and an
  exponential ceiling; the attempt count resets after a stable run).
* Any gap (reconnect, stall, dropped frames, a pts jump, a pause, an ownership
  change) ends the window; no window spans it. Every gap is counted by reason.
* Credentials: ``credentials_ref`` specs get user and password from settings at
  connect time (:func:`inject_credentials`); the URL with credentials is never
  logged, labelled or stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from ..config import ServeSettings, StreamSpec
from ..errors import InputError, RestravError
from ..media.sampler import LiveSampler
from ..media.sources import SourceContext, SourceError, opener_for
from ..media.sources.base import LiveSource, SourceFrame
from ..metrics import StreamMetrics
from ..redaction import redact_text, redact_url
from ..types import SourceClosed
from .alerts import AlertEvent, AlertTracker
from .engine import Engine, EngineSample

log = logging.getLogger("restrav.streams")

STATES = ("starting", "running", "stalled", "reconnecting", "paused", "stopped", "failed")
UNWATCHED_STATES = frozenset({"paused", "stopped", "failed"})
"""States in which no frames are scored: an alert ends on entering them."""


def publisher_awaited(kind: str, state: str | None) -> bool:
    """A WHIP stream ``starting`` (declared, no publisher yet, or one still connecting) or
    ``reconnecting`` (its publisher left) is waiting for its publisher: normal, not a stall."""
    return kind == "whip" and state in ("starting", "reconnecting")


def awaiting_publisher(st: ManagedStream) -> bool:
    """Whether ``st`` waits for its WHIP publisher (:func:`publisher_awaited`)."""
    return publisher_awaited(st.kind, st.status.state)


def watched(st: ManagedStream) -> bool:
    """Whether ``st`` may be in alert: not paused, stopped or failed, and not a WHIP stream
    waiting for its publisher. Scores of windows still in the engine when a stream stops
    being watched are published but leave its alert state alone."""
    return st.status.state not in UNWATCHED_STATES and not awaiting_publisher(st)


class Backoff:
    """Exponential backoff with full jitter, a floor, a cap and a reset.

    The n-th consecutive delay is uniform in ``[floor, max(floor, min(cap,
    floor * 2**n))]``. :meth:`succeeded` after a run of at least
    ``reset_after_s`` resets n to 0. Pure: times are passed in, randomness comes
    from ``rng``.
    """

    def __init__(
        self,
        floor_s: float,
        cap_s: float,
        reset_after_s: float,
        rng: random.Random | None = None,
    ) -> None:
        self.floor_s = floor_s
        self.cap_s = cap_s
        self.reset_after_s = reset_after_s
        self.rng = rng or random.Random()
        self.attempt = 0

    def ceiling(self, attempt: int | None = None) -> float:
        """Upper bound of the delay for ``attempt`` (default: the next one)."""
        n = self.attempt if attempt is None else attempt
        return max(self.floor_s, min(self.cap_s, self.floor_s * math.pow(2.0, min(n, 60))))

    def next_delay(self) -> float:
        """The delay before the next attempt; counts the attempt."""
        d = self.rng.uniform(self.floor_s, self.ceiling())
        self.attempt += 1
        return d

    def ran_for(self, run_s: float) -> None:
        """Report how long the last connection ran; a stable one resets the backoff."""
        if run_s >= self.reset_after_s:
            self.attempt = 0


def strip_credentials(url: str) -> tuple[str, bool]:
    """``url`` without user info, and whether it had any."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url, False
    if "@" not in parts.netloc:
        return url, False
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment)), True


def inject_credentials(url: str, user: str, password: str) -> str:
    """``url`` with ``user:password@`` (percent-encoded) in place of any user info."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclass
class StreamStatus:
    """What the API shows for one stream (no credentials anywhere).

    ``owner`` is the replica running the stream (None: not owned by any replica,
    or a single-replica service) and ``fence`` its fencing token. ``yielding`` is true
    while the stream yields its turn on an overloaded device (degraded: its samples
    are dropped in whole windows, ``windows_yielded`` of them so far), ``priority``
    the operator's priority for keeping it running.
    """

    id: str
    kind: str
    url: str
    state: str
    state_since: float
    paused: bool
    hop: int
    error: dict[str, str] | None = None
    reconnects: int = 0
    frames: int = 0
    samples: int = 0
    frames_dropped: int = 0
    windows_scored: int = 0
    windows_skipped: int = 0
    gaps: dict[str, int] = field(default_factory=dict)
    last_score: dict[str, Any] | None = None
    alert_active: bool = False
    history: list[tuple[str, float]] = field(default_factory=list)
    owner: str | None = None
    fence: int | None = None
    priority: int = 0
    yielding: bool = False
    windows_yielded: int = 0

    def to_json(self) -> dict[str, Any]:
        """JSON view (``history``: the last state transitions, oldest first)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "url": self.url,
            "state": self.state,
            "state_since": round(self.state_since, 3),
            "paused": self.paused,
            "hop": self.hop,
            "error": self.error,
            "reconnects": self.reconnects,
            "frames": self.frames,
            "samples": self.samples,
            "frames_dropped": self.frames_dropped,
            "windows_scored": self.windows_scored,
            "windows_skipped": self.windows_skipped,
            "gaps": dict(self.gaps),
            "last_score": self.last_score,
            "alert_active": self.alert_active,
            "history": [{"state": s, "at": round(t, 3)} for s, t in self.history[-20:]],
            "owner": self.owner,
            "fence": self.fence,
            "priority": self.priority,
            "yielding": self.yielding,
            "windows_yielded": self.windows_yielded,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> StreamStatus:
        """The status another replica published with :meth:`to_json`. Raises KeyError,
        TypeError or ValueError for a malformed object."""
        return cls(
            id=str(d["id"]), kind=str(d["kind"]), url=str(d["url"]), state=str(d["state"]),
            state_since=float(d["state_since"]), paused=bool(d["paused"]), hop=int(d["hop"]),
            error=d.get("error"), reconnects=int(d.get("reconnects", 0)),
            frames=int(d.get("frames", 0)), samples=int(d.get("samples", 0)),
            frames_dropped=int(d.get("frames_dropped", 0)),
            windows_scored=int(d.get("windows_scored", 0)),
            windows_skipped=int(d.get("windows_skipped", 0)),
            gaps={str(k): int(v) for k, v in dict(d.get("gaps") or {}).items()},
            last_score=d.get("last_score"), alert_active=bool(d.get("alert_active", False)),
            history=[(str(h["state"]), float(h["at"])) for h in d.get("history") or []],
            owner=d.get("owner"), fence=d.get("fence"),
            priority=int(d.get("priority", 0)), yielding=bool(d.get("yielding", False)),
            windows_yielded=int(d.get("windows_yielded", 0)),
        )


class ManagedStream:
    """One managed stream: spec, status, sampler, alert state and its task.

    ``fence`` is the fencing token of the lease this replica holds for it (None
    without leases); ``seq_offset`` is added to the engine's per-stream window
    counter so that ``seq`` continues where the previous owner stopped.
    """

    def __init__(self, spec: StreamSpec, kind: str, hop: int, tracker: AlertTracker) -> None:
        self.spec = spec
        self.kind = kind
        self.status = StreamStatus(
            id=spec.id, kind=kind, url=redact_url(spec.url), state="starting",
            state_since=time.time(), paused=spec.paused, hop=hop, priority=spec.priority,
        )
        self.sampler: LiveSampler[SourceFrame] | None = None
        self.tracker = tracker
        self.task: asyncio.Task[None] | None = None
        self.inline_credentials = strip_credentials(spec.url)[1]
        self.lost_credentials = False
        self.fence: int | None = None
        self.seq_offset = 0


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
    ) -> None:
        self.engine = engine
        self.on_alert_event = on_alert_event
        self.settings = settings
        self.metrics = metrics
        self.decode_threads = decode_threads
        self.max_pixels = max_pixels
        self.rng = rng
        self.clock = clock

    def start(self, st: ManagedStream) -> None:
        """Start the stream's task (state ``starting``)."""
        self.set_state(st, "starting")
        st.task = asyncio.create_task(self.run(st), name=f"stream:{st.spec.id}")

    async def cancel(self, st: ManagedStream) -> None:
        """Cancel the stream's task and wait until its source is closed."""
        t = st.task
        st.task = None
        if t is not None and not t.done():
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t

    def set_state(self, st: ManagedStream, state: str, end_reason: str | None = None) -> None:
        """Record a state transition (status, history, metrics, log). Entering an
        unwatched state ends an active alert with ``end_reason`` (``deleted``,
        ``shutdown``...), by default the state itself (``no_publisher`` for WHIP)."""
        if st.status.state == state and st.status.history:
            return
        now = self.clock()
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

    def gap(self, st: ManagedStream, reason: str) -> None:
        """End the stream's window (counted once per gap that interrupted samples)."""
        if st.sampler is not None:
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
        return SourceContext(
            url=url,
            description=redact_url(st.spec.url),
            settings=self.settings.source,
            decode_threads=self.decode_threads,
            max_pixels=self.max_pixels,
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
        """Read frames until the source ends (returns) or fails (SourceError)."""
        s = self.settings.source
        sampler = st.sampler
        assert sampler is not None
        m = self.metrics
        sid = st.spec.id
        recv: asyncio.Task[SourceFrame] | None = None
        last_frame = time.monotonic()
        stalled = False
        try:
            while True:
                if recv is None:
                    recv = asyncio.ensure_future(source.recv())
                idle = time.monotonic() - last_frame
                wait = (s.stall_reconnect_s if stalled else s.stall_after_s) - idle
                done, _ = await asyncio.wait({recv}, timeout=max(0.0, wait))
                if not done:
                    idle = time.monotonic() - last_frame
                    if not stalled and idle >= s.stall_after_s:
                        stalled = True
                        self.set_state(st, "stalled")
                        self.gap(st, "stall")
                    if idle >= s.stall_reconnect_s:
                        raise SourceError(
                            f"{source.description}: no frame for {idle:.1f} s", code="stalled"
                        )
                    continue
                task, recv = recv, None
                try:
                    frame = task.result()
                except SourceClosed:
                    return
                last_frame = time.monotonic()
                if st.status.state != "running":
                    self.set_state(st, "running")
                    st.status.error = None
                stalled = False
                st.status.frames += 1
                if m is not None:
                    m.frames_decoded.labels(sid).inc()
                if frame.dropped_before:
                    st.status.frames_dropped += frame.dropped_before
                    if m is not None:
                        m.frames_dropped.labels(sid, "buffer_full").inc(frame.dropped_before)
                    self.gap(st, "drop")
                reason, samples = sampler.push(frame, frame.pts_s)
                if reason is not None:
                    self.gap(st, reason)
                for r in samples:
                    st.status.samples += 1
                    if m is not None:
                        m.frames_sampled.labels(sid).inc()
                    ok = self.engine.submit(
                        EngineSample(
                            stream_id=sid, segment=r.segment, k=r.k, time_s=r.time_s,
                            frame=r.frame, arrival_s=r.frame.arrival_s, repeated=r.repeated,
                        )
                    )
                    if not ok:
                        # plain fields of the engine, O(1): reading the counter back from
                        # the registry scanned every metric (ms at hundreds of streams, on
                        # every refused sample) and collapsed the loop under overload
                        st.status.frames_dropped += 1
                        counts = self.engine.counts(sid)
                        if counts is not None:
                            st.status.windows_skipped = counts.windows_skipped
                            st.status.windows_yielded = counts.windows_yielded
                            st.status.yielding = counts.yielding
                    elif st.status.yielding:
                        st.status.yielding = False
        finally:
            if recv is not None:
                recv.cancel()
                with contextlib.suppress(asyncio.CancelledError, RestravError, SourceClosed):
                    await recv


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
