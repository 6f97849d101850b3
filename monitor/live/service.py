"""The stream manager: the control surface over every live stream of this process.

Contract:

* :class:`StreamManager` keeps one :class:`~monitor.live.stream_task.ManagedStream`
  per stream and runs its task through a
  :class:`~monitor.live.stream_task.StreamRunner` (connect, read, reconnect with
  backoff, states and gaps: see :mod:`monitor.live.stream_task`). Scores come back
  from the :class:`~monitor.live.engine.Engine` on the event loop, update the
  stream's status and alert hysteresis, and go to the sink.
* :meth:`StreamManager.add` / :meth:`remove` / :meth:`pause` / :meth:`resume` are
  idempotent by stream id. With a :class:`~monitor.live.desired.DesiredStore` the
  desired set (specs with credentials stripped, paused flag) is written on every
  change (:class:`~monitor.live.desired.DesiredSetWriter`) and restored by
  :meth:`StreamManager.restore`.
* :meth:`StreamManager.stop` is the drain step of intake: every task ends and
  its source closes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import urlsplit

from ..config import ServeSettings, ServeSinkSettings, StreamSpec
from ..errors import InputError, RestravError, UnsupportedSource
from ..media.sources import kind_for
from ..metrics import StreamMetrics
from ..types import StreamScore
from .alerts import AlertEvent, AlertTracker, EventBudget, StateEvent
from .batch import EngineSample
from .desired import DesiredSetWriter, DesiredStore, RedisDesiredStore, spec_from_record
from .engine import Engine
from .evidence.capture import SmallFrame
from .evidence.recorder import EvidenceRecorder
from .sinks.base import Sink
from .sinks.held import BatchPublisher
from .stream_state import STATES, Backoff, ManagedStream, StreamStatus, strip_credentials, watched
from .stream_task import StreamRunner

log = logging.getLogger("restrav.streams")

_NETWORK_KINDS = ("rtsp", "http")

__all__ = [
    "STATES",
    "Backoff",
    "DesiredStore",
    "RedisDesiredStore",
    "StreamManager",
    "StreamStatus",
    "strip_credentials",
]


def validate_spec(settings: ServeSettings, spec: StreamSpec, from_api: bool = False) -> str:
    """Check a spec against the serve settings; return its kind. Raises InputError
    (used by StreamManager, and by `serve` before it loads the model)."""
    kind = kind_for(spec)
    url = spec.url
    if any(ord(c) < 0x21 or c == "\x7f" for c in url):
        raise InputError("url must not contain spaces or control characters")
    if kind in _NETWORK_KINDS:
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            raise InputError(f"malformed url: {exc}") from None
        if parts.scheme.lower() not in settings.source.allowed_schemes:
            raise UnsupportedSource(
                f"URL scheme {parts.scheme!r} is not allowed; allowed: "
                f"{', '.join(settings.source.allowed_schemes)}"
            )
        if not parts.hostname:
            raise InputError("url has no host")
    if kind == "file":
        if from_api and not settings.api.allow_file_sources:
            raise UnsupportedSource(
                "file sources are disabled for the API (serve.api.allow_file_sources)"
            )
        if "file" not in settings.source.allowed_schemes:
            raise UnsupportedSource(
                "file sources are not allowed (serve.source.allowed_schemes)"
            )
    ref = spec.credentials_ref
    if ref is not None and ref not in settings.credentials:
        raise InputError(
            f"credentials_ref {spec.credentials_ref!r} is not defined in serve.credentials"
        )
    return kind


def retainer(evidence: EvidenceRecorder | None) -> Callable[[EngineSample], None] | None:
    """What hands each submitted sample's frame to the recorder (evidence, thumbnails;
    compressed off the loop when wanted), or None when both are off."""
    if evidence is None:
        return None
    recorder = evidence
    small: dict[type, bool] = {}  # by type: isinstance() on a runtime Protocol costs us

    def retain(sample: EngineSample) -> None:
        frame = sample.frame
        if (ok := small.get(type(frame))) is None:
            ok = small[type(frame)] = callable(getattr(type(frame), "small_rgb", None))
        if ok:
            recorder.on_sample(sample.stream_id, sample.segment, sample.k, sample.time_s,
                               sample.repeated, cast(SmallFrame, frame))

    return retain


def state_publisher(sink: Sink, settings: ServeSinkSettings, metrics: StreamMetrics | None
                    ) -> Callable[[ManagedStream, StateEvent], None]:
    """What puts a stream's state changes on ``restrav:events``, within the stream's
    :class:`~monitor.live.alerts.EventBudget` (``state_events_burst`` at once, then one
    per ``state_events_refill_s``): a flapping feed's excess is counted
    (``restrav_stream_state_events_suppressed_total``, logged once per run) and the next
    event that goes out says how many were left out."""

    def publish(st: ManagedStream, event: StateEvent) -> None:
        budget = st.state_budget
        if budget is None:
            budget = st.state_budget = EventBudget(settings.state_events_burst,
                                                   settings.state_events_refill_s)
        if not budget.take(event.at):
            if metrics is not None:
                metrics.state_events_suppressed.labels(st.spec.id).inc()
            if budget.suppressed == 1:  # once per run of suppressed changes
                log.info("stream %s: state changes too frequent; not all go to the event "
                         "log (restrav_stream_state_events_suppressed_total)", st.spec.id)
            return
        if budget.suppressed:
            event = dataclasses.replace(event, suppressed=budget.pop_suppressed())
        sink.publish_event(event)

    return publish


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
        evidence: EvidenceRecorder | None = None,
    ) -> None:
        self.engine = engine
        self.sink = sink
        self.out = BatchPublisher(sink)  # a batch's scores queued at once (engine.batch_scope)
        if engine is not None:
            engine.batch_scope = self.out.batch
        self.evidence = evidence
        self.settings = settings
        self.metrics = metrics
        self.store = store
        self.runner = StreamRunner(
            engine, settings, metrics, decode_threads, max_pixels,
            rng or random.Random(), clock, self._publish_alert,
            retainer(evidence), state_publisher(sink, settings.sinks, metrics),
        )
        self.writer = DesiredSetWriter(
            store, settings.persist_streams, lambda: {k: s.spec for k, s in self._streams.items()}
        )
        self._streams: dict[str, ManagedStream] = {}
        self._lock = asyncio.Lock()
        self._accepting = True
        self.restored = False
        """True once :meth:`restore` has listed the configured and persisted streams
        (/readyz waits for it: ready means ``GET /streams`` shows them)."""

    # --- validation ------------------------------------------------------------------

    def validate(self, spec: StreamSpec, from_api: bool = False) -> str:
        """Check a spec against the settings; return its kind. Raises InputError."""
        return validate_spec(self.settings, spec, from_api)

    # --- queries ---------------------------------------------------------------------

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

    # --- control ---------------------------------------------------------------------

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
                await self._stop_stream(old, forget=False, reason="replaced")
            self._start_stream(spec, kind)
        if persist:
            await self.writer.put(spec)
        return "created" if old is None else "replaced"

    async def remove(self, stream_id: str) -> bool:
        """Stop and forget a stream; False if it did not exist."""
        async with self._lock:
            st = self._streams.pop(stream_id, None)
            if st is None:
                return False
            await self._stop_stream(st, forget=True, reason="deleted")
        await self.writer.delete(stream_id)
        return True

    async def pause(self, stream_id: str) -> StreamStatus | None:
        """Stop reading a stream but keep it (state ``paused``); None if unknown."""
        async with self._lock:
            st = self._streams.get(stream_id)
            if st is None:
                return None
            if st.spec.paused:
                return st.status
            st.spec = st.spec.model_copy(update={"paused": True})
            await self._pause_local(st)
            spec = st.spec
        await self.writer.put(spec)
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
            self.runner.start(st)
            spec = st.spec
        await self.writer.put(spec)
        return st.status

    async def restore(self, config_specs: tuple[StreamSpec, ...] = ()) -> None:
        """Start the config's streams, then the persisted desired set (which wins)."""
        specs = await self.load_desired(config_specs)
        for spec, lost in specs.values():
            try:
                kind = self.validate(spec)
            except InputError as exc:
                log.warning("stream %s not started: %s", spec.id, exc.message)
                continue
            async with self._lock:
                self._start_stream(spec, kind, lost_credentials=lost)
        self.restored = True

    async def load_desired(
        self, config_specs: tuple[StreamSpec, ...] = ()
    ) -> dict[str, tuple[StreamSpec, bool]]:
        """The config's specs overlaid with the stored desired set (id -> spec, lost)."""
        specs: dict[str, tuple[StreamSpec, bool]] = {s.id: (s, False) for s in config_specs}
        if self.store is None:
            return specs
        try:
            records = await self.store.load()
        except (OSError, RestravError, ConnectionError) as exc:
            log.warning("desired set not restored (store unreachable: %s)", exc)
            records = []
        except Exception as exc:  # noqa: BLE001 - redis client errors: start without it
            log.warning("desired set not restored (%s: %s)", type(exc).__name__, exc)
            records = []
        for rec in records:
            try:
                spec, lost = spec_from_record(rec)
            except ValueError as exc:
                log.warning("desired set: invalid record skipped: %s", exc)
                continue
            specs[spec.id] = (spec, lost)
        return specs

    async def stop(self) -> None:
        """Stop intake: every stream task ends and its source closes (state ``stopped``)."""
        async with self._lock:
            self._accepting = False
            streams = list(self._streams.values())
            await self.runner.cancel_all(streams)
            for st in streams:
                self.runner.set_state(st, "stopped", end_reason="shutdown")
        await self.writer.aclose()

    # --- one stream's lifecycle ------------------------------------------------------

    def _hop(self, spec: StreamSpec) -> int:
        return spec.hop or self.settings.engine.hop

    def _start_stream(
        self, spec: StreamSpec, kind: str, lost_credentials: bool = False,
        fence: int | None = None, seq_offset: int = 0,
    ) -> ManagedStream:
        a = self.settings.alerts
        st = ManagedStream(spec, kind, self._hop(spec), AlertTracker(spec.id, a.enter, a.leave,
                                                                    a.min_duration_s))
        st.lost_credentials = lost_credentials
        st.fence = fence
        st.seq_offset = seq_offset
        st.status.fence = fence
        self._streams[spec.id] = st

        m = self.metrics
        # the stream's gauges, looked up once (two labels() calls per window otherwise)
        gauges = (m.last_score.labels(spec.id), m.last_score_ts.labels(spec.id)) if m else None

        def on_score(sc: StreamScore) -> None:
            self._on_score(st, sc, gauges)

        self.engine.register(spec.id, on_score, st.status.hop, spec.priority)
        if self.evidence is not None:
            self.evidence.watch(spec.id, spec.evidence)
        if lost_credentials:
            log.warning("stream %s: its inline credentials were not persisted", spec.id)
            st.status.error = {
                "code": "credentials_lost",
                "message": "the URL had inline credentials, which are never stored; "
                "re-add the stream, or use credentials_ref",
            }
            self.runner.set_state(st, "failed")
        elif spec.paused:
            self.runner.set_state(st, "paused")
        else:
            self.runner.start(st)
        return st

    async def _pause_local(self, st: ManagedStream) -> None:
        await self.runner.cancel(st)
        self.runner.gap(st, "pause")
        self.runner.set_state(st, "paused")
        st.status.paused = True

    async def _stop_stream(self, st: ManagedStream, forget: bool, reason: str = "stopped"
                           ) -> None:
        """Cancel ``st``'s task; an active alert ends with ``reason``."""
        await self.runner.cancel(st)
        self.runner.set_state(st, "stopped", end_reason=reason)
        self.engine.unregister(st.spec.id)
        if self.evidence is not None:
            self.evidence.forget(st.spec.id)
        if forget and self.metrics is not None:
            self.metrics.forget_stream(st.spec.id)

    def _on_score(self, st: ManagedStream, sc: StreamScore,
                  gauges: tuple[Any, Any] | None = None) -> None:
        """Runs on the event loop for each scored window of ``st``; ``gauges``: the
        stream's last-score and last-score-time children (looked up here without)."""
        if self._streams.get(st.spec.id) is not st:
            return  # removed, replaced or handed over meanwhile
        if st.seq_offset or st.fence is not None:
            sc = dataclasses.replace(sc, seq=sc.seq + st.seq_offset, fence=st.fence)
        st.status.windows_scored += 1
        st.status.scored = sc  # last_score is built from it when read
        m = self.metrics
        if m is not None and sc.p_ai is not None:
            g_score, g_ts = gauges or (m.last_score.labels(st.spec.id),
                                       m.last_score_ts.labels(st.spec.id))
            g_score.set(sc.p_ai)
            g_ts.set(sc.scored_at)
        # a window still in the engine when the stream was paused or stopped is published,
        # but must not start an alert (nor arm one) after its alert_end
        event = st.tracker.update(sc.p_ai, sc.scored_at) if watched(st) else None
        if self.evidence is not None:
            started = event is not None and event.kind == "alert_start"
            rid = self.evidence.on_score(sc, started)
            if started and rid is not None:
                assert event is not None
                event = dataclasses.replace(event, evidence=rid)
        if event is not None:
            st.status.alert_active = st.tracker.active
            if m is not None:
                m.alert_active.labels(st.spec.id).set(1.0 if st.tracker.active else 0.0)
                if event.kind == "alert_start":
                    m.alerts.labels(st.spec.id).inc()
            self._publish_alert(st, event)
        self.out.publish(sc)

    def _publish_alert(self, st: ManagedStream, event: AlertEvent) -> None:
        """Write an alert transition to the sink, with the owner's fence."""
        if st.fence is not None:
            event = dataclasses.replace(event, fence=st.fence)
        self.out.publish_event(event)
