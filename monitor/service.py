"""The stream manager: live streams, their states, reconnects, watchdog and desired set.

Contract:

* :class:`StreamManager` runs one asyncio task per stream. A task opens the
  stream's source (the opener registered for its kind), reads frames, runs
  them through a :class:`~monitor.sampler.LiveSampler` and submits the samples
  to the :class:`~monitor.engine.Engine`; scores come back on the event loop,
  update the stream's status and alert hysteresis, and go to the sink.
* States: ``starting`` (opening), ``running`` (frames arriving), ``stalled``
  (no frame for ``stall_after_s``; the window ends), ``reconnecting`` (waiting
  out the backoff and reopening after a failure, or after ``stall_reconnect_s``
  without frames), ``paused``, ``stopped`` (removed, file ended, shutdown) and
  ``failed`` (a permanent error: unsupported, missing file, lost credentials).
* Reconnects wait :class:`Backoff` delays (full jitter between a floor and an
  exponential ceiling; the attempt count resets after a stable run).
* Any gap (reconnect, stall, dropped frames, a pts jump) ends the window; no
  window spans it. Every gap is counted by reason.
* :meth:`StreamManager.add` / :meth:`remove` / :meth:`pause` / :meth:`resume` are
  idempotent by stream id. With a :class:`DesiredStore` the desired set (specs
  with credentials stripped, paused flag) is written on every change and
  restored by :meth:`StreamManager.restore`.
* Credentials: ``credentials_ref`` specs get user and password from settings at
  connect time; the URL with credentials is never logged, labelled or stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote, urlsplit, urlunsplit

from . import keys
from .alerts import AlertTracker
from .config import ServeSettings, StreamSpec
from .engine import Engine, EngineSample
from .errors import InputError, RestravError, UnsupportedSource
from .metrics import StreamMetrics
from .redaction import redact_url
from .sampler import LiveSampler
from .sinks.base import Sink
from .sources import SourceContext, SourceError, kind_for, opener_for
from .sources.base import LiveSource, SourceFrame
from .types import SourceClosed, StreamScore

log = logging.getLogger("restrav.streams")

STATES = ("starting", "running", "stalled", "reconnecting", "paused", "stopped", "failed")

_NETWORK_KINDS = ("rtsp", "http")


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


class DesiredStore(Protocol):
    """Where the desired set of streams is kept (Redis in production)."""

    async def load(self) -> list[dict[str, Any]]:
        """Every stored spec (as JSON objects)."""
        ...

    async def put(self, stream_id: str, record: dict[str, Any]) -> None:
        """Store or replace one spec."""
        ...

    async def delete(self, stream_id: str) -> None:
        """Forget one spec."""
        ...


class RedisDesiredStore:
    """The desired set as a Redis hash ``restrav:streams`` (id -> JSON)."""

    def __init__(self, client: Any, key: str = keys.STREAMS_DESIRED) -> None:
        self.client = client
        self.key = key

    async def load(self) -> list[dict[str, Any]]:
        """Every stored record; unreadable entries are skipped with a warning."""
        raw: dict[Any, Any] = await self.client.hgetall(self.key)
        out = []
        for k, v in raw.items():
            try:
                rec = json.loads(v)
            except ValueError:
                log.warning("desired set: unreadable entry %r skipped", k)
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out

    async def put(self, stream_id: str, record: dict[str, Any]) -> None:
        """HSET one record."""
        await self.client.hset(self.key, stream_id, json.dumps(record, sort_keys=True))

    async def delete(self, stream_id: str) -> None:
        """HDEL one record."""
        await self.client.hdel(self.key, stream_id)


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


def _inject_credentials(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclass
class StreamStatus:
    """What the API shows for one stream (no credentials anywhere)."""

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
        }


class _Stream:
    """One managed stream: spec, status, sampler, alert state and its task."""

    def __init__(self, spec: StreamSpec, kind: str, hop: int, tracker: AlertTracker) -> None:
        self.spec = spec
        self.kind = kind
        self.status = StreamStatus(
            id=spec.id, kind=kind, url=redact_url(spec.url), state="starting",
            state_since=time.time(), paused=spec.paused, hop=hop,
        )
        self.sampler: LiveSampler[SourceFrame] | None = None
        self.tracker = tracker
        self.task: asyncio.Task[None] | None = None
        self.inline_credentials = strip_credentials(spec.url)[1]
        self.lost_credentials = False


class StreamManager:
    """Runs and controls every live stream (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        sink: Sink,
        settings: ServeSettings = ServeSettings(),
        metrics: StreamMetrics | None = None,
        store: DesiredStore | None = None,
        decode_threads: int = 0,
        max_pixels: int = 8192 * 8192,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.sink = sink
        self.settings = settings
        self.metrics = metrics
        self.store = store
        self.decode_threads = decode_threads
        self.max_pixels = max_pixels
        self.rng = rng or random.Random()
        self.clock = clock
        self._streams: dict[str, _Stream] = {}
        self._lock = asyncio.Lock()
        self._accepting = True
        self._dirty = False
        self._sync_task: asyncio.Task[None] | None = None

    # --- validation ------------------------------------------------------------------

    def validate(self, spec: StreamSpec, from_api: bool = False) -> str:
        """Check a spec against the settings; return its kind. Raises InputError."""
        kind = kind_for(spec)
        url = spec.url
        if any(ord(c) < 0x21 or c == "\x7f" for c in url):
            raise InputError("url must not contain spaces or control characters")
        if kind in _NETWORK_KINDS:
            try:
                parts = urlsplit(url)
            except ValueError as exc:
                raise InputError(f"malformed url: {exc}") from None
            if parts.scheme.lower() not in self.settings.source.allowed_schemes:
                raise UnsupportedSource(
                    f"URL scheme {parts.scheme!r} is not allowed; allowed: "
                    f"{', '.join(self.settings.source.allowed_schemes)}"
                )
            if not parts.hostname:
                raise InputError("url has no host")
        if kind == "file":
            if from_api and not self.settings.api.allow_file_sources:
                raise UnsupportedSource(
                    "file sources are disabled for the API (serve.api.allow_file_sources)"
                )
            if "file" not in self.settings.source.allowed_schemes:
                raise UnsupportedSource(
                    "file sources are not allowed (serve.source.allowed_schemes)"
                )
        ref = spec.credentials_ref
        if ref is not None and ref not in self.settings.credentials:
            raise InputError(
                f"credentials_ref {spec.credentials_ref!r} is not defined in serve.credentials"
            )
        return kind

    # --- control ---------------------------------------------------------------------

    def __contains__(self, stream_id: str) -> bool:
        return stream_id in self._streams

    def __len__(self) -> int:
        return len(self._streams)

    def get(self, stream_id: str) -> StreamStatus | None:
        """The status of one stream, or None."""
        st = self._streams.get(stream_id)
        return st.status if st else None

    def spec(self, stream_id: str) -> StreamSpec | None:
        """The spec of one stream, or None."""
        st = self._streams.get(stream_id)
        return st.spec if st else None

    def list(self) -> list[StreamStatus]:
        """Every stream's status, by id."""
        return [self._streams[k].status for k in sorted(self._streams)]

    async def add(self, spec: StreamSpec, from_api: bool = False, persist: bool = True) -> str:
        """Run ``spec``. Returns ``"created"``, ``"unchanged"`` (same spec) or ``"replaced"``.

        Raises :class:`~monitor.errors.InputError` for a spec the settings refuse.
        """
        kind = self.validate(spec, from_api)
        async with self._lock:
            if not self._accepting:
                raise RestravError("shutting down; not accepting streams")
            old = self._streams.get(spec.id)
            if old is not None and old.spec == spec and not old.lost_credentials:
                return "unchanged"
            if old is not None:
                await self._stop_stream(old, forget=False)
            self._start_stream(spec, kind)
        if persist:
            await self._persist(spec)
        return "created" if old is None else "replaced"

    async def remove(self, stream_id: str) -> bool:
        """Stop and forget a stream; False if it did not exist."""
        async with self._lock:
            st = self._streams.pop(stream_id, None)
            if st is None:
                return False
            await self._stop_stream(st, forget=True)
        await self._unpersist(stream_id)
        return True

    async def pause(self, stream_id: str) -> StreamStatus | None:
        """Stop reading a stream but keep it (state ``paused``); None if unknown."""
        async with self._lock:
            st = self._streams.get(stream_id)
            if st is None:
                return None
            if not st.spec.paused:
                st.spec = st.spec.model_copy(update={"paused": True})
                await self._cancel(st)
                self._gap(st, "pause")
                self._set_state(st, "paused")
                st.status.paused = True
                spec = st.spec
            else:
                return st.status
        await self._persist(spec)
        return st.status

    async def resume(self, stream_id: str) -> StreamStatus | None:
        """Resume a paused stream; None if unknown."""
        async with self._lock:
            st = self._streams.get(stream_id)
            if st is None:
                return None
            if not st.spec.paused:
                return st.status
            st.spec = st.spec.model_copy(update={"paused": False})
            st.status.paused = False
            self._set_state(st, "starting")
            st.task = asyncio.create_task(self._run(st), name=f"stream:{st.spec.id}")
            spec = st.spec
        await self._persist(spec)
        return st.status

    async def restore(self, config_specs: tuple[StreamSpec, ...] = ()) -> None:
        """Start the config's streams, then the persisted desired set (which wins)."""
        specs: dict[str, tuple[StreamSpec, bool]] = {s.id: (s, False) for s in config_specs}
        if self.store is not None:
            try:
                records = await self.store.load()
            except (OSError, RestravError, ConnectionError) as exc:
                log.warning("desired set not restored (store unreachable: %s)", exc)
                records = []
            except Exception as exc:  # noqa: BLE001 - redis client errors: start without it
                log.warning("desired set not restored (%s: %s)", type(exc).__name__, exc)
                records = []
            for rec in records:
                lost = bool(rec.pop("inline_credentials", False))
                try:
                    spec = StreamSpec(**rec)
                except ValueError as exc:
                    log.warning("desired set: invalid record skipped: %s", exc)
                    continue
                specs[spec.id] = (spec, lost)
        for spec, lost in specs.values():
            try:
                kind = self.validate(spec)
            except InputError as exc:
                log.warning("stream %s not started: %s", spec.id, exc.message)
                continue
            async with self._lock:
                st = self._start_stream(spec, kind, lost_credentials=lost)
            if lost:
                log.warning("stream %s: its inline credentials were not persisted", spec.id)
                st.status.error = {
                    "code": "credentials_lost",
                    "message": "the URL had inline credentials, which are never stored; "
                    "re-add the stream, or use credentials_ref",
                }

    async def stop(self) -> None:
        """Stop intake: every stream task ends and its source closes (state ``stopped``)."""
        async with self._lock:
            self._accepting = False
            for st in list(self._streams.values()):
                await self._cancel(st)
                self._set_state(st, "stopped")
        if self._sync_task is not None:
            self._sync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync_task

    # --- internals -------------------------------------------------------------------

    def _hop(self, spec: StreamSpec) -> int:
        return spec.hop or self.settings.engine.hop

    def _start_stream(self, spec: StreamSpec, kind: str, lost_credentials: bool = False) -> _Stream:
        a = self.settings.alerts
        st = _Stream(spec, kind, self._hop(spec), AlertTracker(spec.id, a.enter, a.leave,
                                                              a.min_duration_s))
        st.lost_credentials = lost_credentials
        self._streams[spec.id] = st

        def on_score(sc: StreamScore) -> None:
            self._on_score(st, sc)

        self.engine.register(spec.id, on_score, st.status.hop)
        if lost_credentials:
            self._set_state(st, "failed")
        elif spec.paused:
            self._set_state(st, "paused")
        else:
            self._set_state(st, "starting")
            st.task = asyncio.create_task(self._run(st), name=f"stream:{spec.id}")
        return st

    async def _cancel(self, st: _Stream) -> None:
        t = st.task
        st.task = None
        if t is not None and not t.done():
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def _stop_stream(self, st: _Stream, forget: bool) -> None:
        await self._cancel(st)
        self._set_state(st, "stopped")
        self.engine.unregister(st.spec.id)
        if forget and self.metrics is not None:
            self.metrics.forget_stream(st.spec.id)

    def _set_state(self, st: _Stream, state: str) -> None:
        if st.status.state == state and st.status.history:
            return
        now = self.clock()
        st.status.state = state
        st.status.state_since = now
        st.status.history.append((state, now))
        del st.status.history[:-50]
        if self.metrics is not None:
            self.metrics.set_state(st.spec.id, state)
        log.info("stream %s: %s", st.spec.id, state)

    def _gap(self, st: _Stream, reason: str) -> None:
        """End the stream's window (counted once per gap that interrupted samples)."""
        if st.sampler is not None:
            st.sampler.gap()
        st.status.gaps[reason] = st.status.gaps.get(reason, 0) + 1
        if self.metrics is not None:
            self.metrics.gaps.labels(st.spec.id, reason).inc()

    def _error(self, st: _Stream, code: str, message: str) -> None:
        st.status.error = {"code": code, "message": redact_url(message)}
        if self.metrics is not None:
            self.metrics.source_errors.labels(st.spec.id, code).inc()

    def _context(self, st: _Stream) -> SourceContext:
        url = st.spec.url
        if st.spec.credentials_ref is not None:
            cred = self.settings.credentials[st.spec.credentials_ref]
            url = _inject_credentials(url, cred.username, cred.password.get_secret_value())
        return SourceContext(
            url=url,
            description=redact_url(st.spec.url),
            settings=self.settings.source,
            decode_threads=self.decode_threads,
            max_pixels=self.max_pixels,
        )

    async def _run(self, st: _Stream) -> None:
        """The stream task: connect, read, reconnect with backoff, until cancelled or done."""
        s = self.settings.source
        backoff = Backoff(s.backoff.floor_s, s.backoff.cap_s, s.backoff.reset_after_s, self.rng)
        if st.sampler is None:
            st.sampler = LiveSampler(s.gap_tolerance_s)
        opener = opener_for(st.kind)
        first = True
        while True:
            if not first:
                self._set_state(st, "reconnecting")
                await asyncio.sleep(backoff.next_delay())
                st.status.reconnects += 1
                if self.metrics is not None:
                    self.metrics.reconnects.labels(st.spec.id).inc()
            else:
                self._set_state(st, "starting")
            first = False
            try:
                source = await opener(st.spec, self._context(st))
            except SourceError as exc:
                self._error(st, exc.code, exc.message)
                if exc.permanent:
                    self._set_state(st, "failed")
                    return
                log.warning("stream %s: %s", st.spec.id, redact_url(exc.message))
                continue
            except InputError as exc:
                self._error(st, exc.code, exc.message)
                self._set_state(st, "failed")
                return
            except Exception as exc:  # source reconnect loop boundary: log, count, retry
                log.exception("stream %s: opening the source failed unexpectedly", st.spec.id)
                self._error(st, "internal", f"{type(exc).__name__} while opening (see logs)")
                continue
            connected_at = time.monotonic()
            try:
                await self._consume(st, source)
                self._set_state(st, "stopped")  # the source ended for good (a file)
                return
            except SourceError as exc:
                self._error(st, exc.code, exc.message)
                log.warning("stream %s: %s", st.spec.id, redact_url(exc.message))
                self._gap(st, "reconnect")
            except Exception as exc:  # source reconnect loop boundary: log, count, retry
                log.exception("stream %s: reading the source failed unexpectedly", st.spec.id)
                self._error(st, "internal", f"{type(exc).__name__} while reading (see logs)")
                self._gap(st, "reconnect")
            finally:
                with contextlib.suppress(Exception):  # closing must never mask the cause
                    await source.aclose()
            backoff.ran_for(time.monotonic() - connected_at)

    async def _consume(self, st: _Stream, source: LiveSource) -> None:
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
                        self._set_state(st, "stalled")
                        self._gap(st, "stall")
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
                    self._set_state(st, "running")
                    st.status.error = None
                stalled = False
                st.status.frames += 1
                if m is not None:
                    m.frames_decoded.labels(sid).inc()
                if frame.dropped_before:
                    st.status.frames_dropped += frame.dropped_before
                    if m is not None:
                        m.frames_dropped.labels(sid, "buffer_full").inc(frame.dropped_before)
                    self._gap(st, "drop")
                reason, samples = sampler.push(frame, frame.pts_s)
                if reason is not None:
                    self._gap(st, reason)
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
                        st.status.frames_dropped += 1
                        st.status.windows_skipped = self._skipped(sid)
        finally:
            if recv is not None:
                recv.cancel()
                with contextlib.suppress(asyncio.CancelledError, RestravError, SourceClosed):
                    await recv

    def _skipped(self, sid: str) -> int:
        if self.metrics is None:
            return 0
        v = self.metrics.registry.get_sample_value(
            "restrav_stream_windows_skipped_total", {"stream": sid, "reason": "overload"}
        )
        return int(v or 0)

    def _on_score(self, st: _Stream, sc: StreamScore) -> None:
        """Runs on the event loop for each scored window of ``st``."""
        if self._streams.get(st.spec.id) is not st:
            return  # removed or replaced meanwhile
        st.status.windows_scored += 1
        st.status.last_score = {
            "seq": sc.seq,
            "p_ai": sc.p_ai,
            "start_s": round(sc.start_s, 6),
            "end_s": round(sc.end_s, 6),
            "flagged": sc.score.flagged,
            "at": round(sc.scored_at, 3),
        }
        m = self.metrics
        if m is not None and sc.p_ai is not None:
            m.last_score.labels(st.spec.id).set(sc.p_ai)
            m.last_score_ts.labels(st.spec.id).set(sc.scored_at)
        event = st.tracker.update(sc.p_ai, sc.scored_at)
        if event is not None:
            st.status.alert_active = st.tracker.active
            if m is not None:
                m.alert_active.labels(st.spec.id).set(1.0 if st.tracker.active else 0.0)
                if event.kind == "alert_start":
                    m.alerts.labels(st.spec.id).inc()
            self.sink.publish_event(event)
        self.sink.publish(sc)

    # --- persistence -----------------------------------------------------------------

    def _record(self, spec: StreamSpec) -> dict[str, Any]:
        url, had = strip_credentials(spec.url)
        rec = spec.model_dump()
        rec["url"] = url
        if had:
            rec["inline_credentials"] = True
        return rec

    async def _persist(self, spec: StreamSpec) -> None:
        if self.store is None or not self.settings.persist_streams:
            return
        try:
            await self.store.put(spec.id, self._record(spec))
        except Exception as exc:  # noqa: BLE001 - store outage: resync later, never fail the call
            log.warning("desired set not saved (%s); will retry", type(exc).__name__)
            self._mark_dirty()

    async def _unpersist(self, stream_id: str) -> None:
        if self.store is None or not self.settings.persist_streams:
            return
        try:
            await self.store.delete(stream_id)
        except Exception as exc:  # noqa: BLE001 - store outage: resync later, never fail the call
            log.warning("desired set not saved (%s); will retry", type(exc).__name__)
            self._mark_dirty()

    def _mark_dirty(self) -> None:
        self._dirty = True
        if self._sync_task is None or self._sync_task.done():
            self._sync_task = asyncio.create_task(self._resync(), name="desired-set-sync")

    async def _resync(self) -> None:
        """Rewrite the whole desired set until the store takes it."""
        assert self.store is not None
        delay = 0.5
        while self._dirty:
            await asyncio.sleep(delay)
            try:
                stored = {r.get("id") for r in await self.store.load()}
                current = {k: st.spec for k, st in self._streams.items()}
                for sid in stored - set(current):
                    if isinstance(sid, str):
                        await self.store.delete(sid)
                for sid, spec in current.items():
                    await self.store.put(sid, self._record(spec))
                self._dirty = False
                log.info("desired set saved")
            except Exception:  # noqa: BLE001 - store still down: try again later
                delay = min(10.0, delay * 2)
