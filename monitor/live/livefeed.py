"""The operator page's live feed: per-stream timelines and a bounded Server-Sent Events fan-out.

Contract:

* :class:`LiveFeed` is a sink (:class:`~monitor.live.sinks.base.Sink`): the stream
  manager's fan-out hands it every score and alert event, never blocking. It
  keeps, per stream, a timeline of the last ``history_s`` seconds at one point
  per ``tick_s`` (the highest P(AI) of the tick, the mean of the mean-curvature
  feature ``theta_mean``, whether any window was flagged for repeated frames,
  the segment), the alert periods (``[start, end]``, with the evidence id of the
  window that started it as a third element when one was kept), marks (state
  changes, reconnects, gaps by reason) and the 21 features of the latest window.
* States, reconnects and gaps are read from the manager's status (the
  ``statuses`` callable, polled once per tick): the feed does not reach into
  the manager.
* Once per tick one ``update`` message is built, serialised once and offered
  to every subscriber. A subscriber holds at most ``client_buffer_messages``
  messages; one that falls that far behind (a client that does not read) is
  dropped, its connection aborted, and counted in
  ``restrav_ui_clients_dropped_total{reason="slow"}``. At most ``max_clients``
  subscribe at once (``restrav_ui_clients_refused_total{reason="too_many"}``).
* :meth:`LiveFeed.drain` tells every client (``event: bye``, ``{"reason":
  "draining"}``), ends their responses, and aborts the ones that do not take
  the goodbye within a deadline; later connections are refused.

The subscribers are :class:`~monitor.live.fanout.Fanout`'s; the routes
(:func:`monitor.live.page.add_ui_routes`) serve the page and the event stream.

Why the event stream takes the token in the ``Authorization`` header: the page
reads it with ``fetch()`` and a streamed body rather than ``EventSource``
(which cannot send headers), so the token never appears in a URL: not in
access logs, proxies or browser history, and no ticket state is needed on the
server. The page keeps the token in ``sessionStorage`` (one tab, gone when it
closes); a ``#token=`` fragment, which browsers never send, is accepted once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import UiSettings
from ..metrics import LiveFeedMetrics
from ..types import FEATURE_NAMES, StreamScore
from .alerts import AlertEvent, Event
from .fanout import Fanout, Subscriber, sse
from .stream_state import publisher_awaited

log = logging.getLogger("restrav.ui")

THETA_MEAN = FEATURE_NAMES.index("theta_mean")
_MAX_ALERTS = 100
_MAX_MARKS = 200
StatusLister = Callable[[], Iterable[dict[str, Any]]]
"""Returns every stream's status as JSON (``StreamStatus.to_json()``)."""


def _r(v: float | None, nd: int) -> float | None:
    if v is None or not math.isfinite(v):
        return None
    return round(v, nd)


@dataclass
class _Bucket:
    """Scores of one stream received during the current tick."""

    t: float = 0.0
    p_max: float | None = None
    c_sum: float = 0.0
    c_n: int = 0
    flagged: bool = False
    segment: int = 0

    def add(self, sc: StreamScore) -> None:
        self.t = max(self.t, sc.wall_end or sc.scored_at)
        p = sc.p_ai
        if p is not None and (self.p_max is None or p > self.p_max):
            self.p_max = p
        c = float(sc.score.window.features[THETA_MEAN])
        if math.isfinite(c):
            self.c_sum += c
            self.c_n += 1
        self.flagged = self.flagged or sc.score.flagged
        self.segment = sc.segment

    def point(self) -> list[Any]:
        """``[t, p_ai (max), curvature (mean, degrees), flagged (0/1), segment]``."""
        c = self.c_sum / self.c_n if self.c_n else None
        return [round(self.t, 2), _r(self.p_max, 4), _r(c, 3), int(self.flagged), self.segment]


@dataclass
class _Track:
    """What the feed keeps about one stream."""

    points: collections.deque[list[Any]]
    alerts: collections.deque[list[Any]] = field(
        default_factory=lambda: collections.deque(maxlen=_MAX_ALERTS)
    )
    marks: collections.deque[list[Any]] = field(
        default_factory=lambda: collections.deque(maxlen=_MAX_MARKS)
    )
    bucket: _Bucket | None = None
    latest: StreamScore | None = None
    status: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    seen_history_at: float = 0.0
    gaps: dict[str, int] = field(default_factory=dict)


def _latest(score: StreamScore) -> dict[str, Any]:
    """A stream's latest window as the page shows it (21 named features)."""
    w = score.score.window
    return {
        "seq": score.seq,
        "segment": score.segment,
        "at": round(score.wall_end or score.scored_at, 3),
        "p_ai": _r(score.p_ai, 6),
        "threshold": score.score.threshold,
        "flagged": score.score.flagged,
        "repeated_samples": score.score.repeated_samples,
        "zero_steps": w.repeated_frames,
        "features": {n: _r(float(v), 6) for n, v in zip(FEATURE_NAMES, w.features)},
    }


def _summary(st: dict[str, Any]) -> dict[str, Any]:
    """The part of a status the list view shows (sent when it changes: nothing in it
    changes at every window, so a steady stream costs no status bytes)."""
    err = st.get("error")
    return {
        "state": st.get("state"),
        # when the state began: a state older than history_s is still drawn up to now
        "since": st.get("state_since"),
        "kind": st.get("kind"),
        "paused": st.get("paused"),
        "alert": st.get("alert_active"),
        # a WHIP stream waiting for its publisher is not stalled (no band, not counted)
        "awaiting": publisher_awaited(str(st.get("kind")), st.get("state")),
        "reconnects": st.get("reconnects"),
        "yielding": st.get("yielding", False),
        "error": err.get("code") if isinstance(err, dict) else None,
        "error_message": err.get("message") if isinstance(err, dict) else None,
    }


class LiveFeed:
    """Timelines for the operator page and their bounded fan-out (see the module docstring)."""

    name = "livefeed"

    def __init__(
        self,
        settings: UiSettings = UiSettings(),
        alert_enter: float = 0.8,
        alert_leave: float = 0.6,
        metrics: LiveFeedMetrics | None = None,
        statuses: StatusLister | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.alert_enter = alert_enter
        self.alert_leave = alert_leave
        self.metrics = metrics
        self.statuses = statuses
        self.clock = clock
        self.max_points = max(2, math.ceil(settings.history_s / settings.tick_s) + 1)
        self._tracks: dict[str, _Track] = {}
        self.fanout = Fanout(settings, metrics)
        self._alerts_changed: dict[str, list[list[Any]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._ticks = 0
        self._snapshot: tuple[int, bytes] | None = None

    # --- sink side (called on the event loop; never blocks) ---------------------------

    def _track(self, stream_id: str) -> _Track:
        tr = self._tracks.get(stream_id)
        if tr is None:
            tr = _Track(points=collections.deque(maxlen=self.max_points))
            self._tracks[stream_id] = tr
        return tr

    def publish(self, score: StreamScore) -> None:
        """Add one scored window to its stream's current tick."""
        tr = self._track(score.stream_id)
        if tr.bucket is None:
            tr.bucket = _Bucket()
        tr.bucket.add(score)
        # kept as is: the named-feature dict is built when a page asks for the stream
        # (detail), not for every window (it cost as much as the rest of the feed)
        tr.latest = score

    def publish_many(self, scores: Sequence[StreamScore]) -> None:
        """:meth:`publish` each score, in order."""
        for sc in scores:
            self.publish(sc)

    def publish_event(self, event: Event) -> None:
        """Open or close an alert period of the event's stream (other events: nothing)."""
        if not isinstance(event, AlertEvent):
            return
        tr = self._track(event.stream_id)
        if event.kind == "alert_start":
            period: list[Any] = [round(event.since, 2), None]
            if event.evidence is not None:  # the record of the window that started it
                period.append(event.evidence)
            tr.alerts.append(period)
        elif event.kind == "alert_end" and tr.alerts and tr.alerts[-1][1] is None:
            period = tr.alerts[-1]
            period[1] = round(event.at, 2)
        else:
            return
        touched = self._alerts_changed.setdefault(event.stream_id, [])
        if not any(p is period for p in touched):
            touched.append(period)

    async def start(self) -> None:
        """Start the ticker."""
        if self._task is None:
            self._task = asyncio.create_task(self._ticker(), name="livefeed")

    async def flush(self, timeout_s: float) -> bool:
        """Nothing to write anywhere durable: always True."""
        return True

    async def aclose(self) -> None:
        """Drain the clients (if not yet) and stop the ticker."""
        await self.drain("shutdown")
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # --- ticks --------------------------------------------------------------------------

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.settings.tick_s)
            self.tick()

    def tick(self) -> dict[str, Any]:
        """Close the current tick: fold buckets into points, poll statuses, broadcast.

        Returns the update (also sent to every subscriber as ``event: update``).
        """
        now = self.clock()
        self._ticks += 1
        status, marks, removed = self._poll(now)  # first: a removed stream gets no point
        points: dict[str, list[Any]] = {}
        for sid, tr in self._tracks.items():
            if tr.bucket is not None:
                pt = tr.bucket.point()
                tr.points.append(pt)
                points[sid] = pt
                tr.bucket = None
        # every period opened or closed this tick (an alert can end and the next start
        # within one tick), oldest first; pages match them by their start time
        alerts = {sid: [list(p) for p in periods]
                  for sid, periods in sorted(self._alerts_changed.items()) if sid in self._tracks}
        self._alerts_changed.clear()
        update = {"t": round(now, 2), "points": points, "status": status, "marks": marks,
                  "alerts": alerts, "removed": removed}
        self.fanout.broadcast(sse("update", update))
        return update

    def _poll(self, now: float) -> tuple[dict[str, Any], dict[str, list[Any]], list[str]]:
        """Read the manager's statuses: changed summaries, new marks, removed streams."""
        changed: dict[str, Any] = {}
        marks: dict[str, list[Any]] = {}
        if self.statuses is None:
            return changed, marks, []
        present: set[str] = set()
        for st in self.statuses():
            sid = str(st["id"])
            present.add(sid)
            tr = self._track(sid)
            tr.status = st
            new: list[Any] = []
            for h in st.get("history", []):
                at = float(h["at"])
                if at > tr.seen_history_at:
                    new.append([round(at, 2), "state", h["state"]])
                    tr.seen_history_at = at
            gaps = st.get("gaps", {})
            for reason, n in gaps.items():
                if n > tr.gaps.get(reason, 0):
                    new.append([round(now, 2), "gap", reason])
            tr.gaps = dict(gaps)
            tr.marks.extend(new)
            if new:
                marks[sid] = new
            summ = _summary(st)
            if summ != tr.summary:
                tr.summary = summ
                changed[sid] = summ
        removed = sorted(set(self._tracks) - present)
        for sid in removed:
            del self._tracks[sid]
        return changed, marks, removed

    # --- subscribers (the fan-out's) -------------------------------------------------

    def subscribe(self) -> Subscriber | str:
        """A new subscriber, or the reason it is refused (``too_many``, ``draining``)."""
        return self.fanout.subscribe()

    def unsubscribe(self, sub: Subscriber) -> None:
        """Forget ``sub`` (its connection ended)."""
        self.fanout.unsubscribe(sub)

    def drop(self, sub: Subscriber, reason: str) -> None:
        """Disconnect ``sub`` now (counted by ``reason``)."""
        self.fanout.drop(sub, reason)

    async def drain(self, reason: str = "draining") -> None:
        """Tell every client ``bye`` and close; abort those still writing after a deadline."""
        await self.fanout.drain(reason)

    @property
    def clients(self) -> int:
        """Subscribers now."""
        return self.fanout.clients

    @property
    def draining(self) -> bool:
        """True once :meth:`drain` began: new clients are refused."""
        return self.fanout.draining

    @property
    def dropped(self) -> int:
        """Clients dropped so far (slow, write timeout)."""
        return self.fanout.dropped

    @property
    def refused(self) -> int:
        """Clients refused so far (too many, draining)."""
        return self.fanout.refused

    @property
    def messages(self) -> int:
        """Update messages broadcast so far."""
        return self.fanout.messages

    def snapshot(self) -> dict[str, Any]:
        """Everything a new client needs: settings, and every stream's timeline."""
        now = self.clock()
        horizon = now - self.settings.history_s
        streams = {}
        for sid, tr in self._tracks.items():
            streams[sid] = {
                "summary": tr.summary or _summary(tr.status),
                "points": [p for p in tr.points if p[0] >= horizon],
                "alerts": [a for a in tr.alerts if a[1] is None or a[1] >= horizon],
                "marks": [m for m in tr.marks if m[0] >= horizon],
            }
        return {
            "t": round(now, 2),
            "history_s": self.settings.history_s,
            "tick_s": self.settings.tick_s,
            "alert_enter": self.alert_enter,
            "alert_leave": self.alert_leave,
            "feature_names": list(FEATURE_NAMES),
            "thumbnails": self.settings.thumbnails,
            "streams": streams,
        }

    def snapshot_message(self) -> bytes:
        """:meth:`snapshot` as an SSE message, built at most once a tick: pages that
        connect together (after a restart) share one serialisation."""
        if self._snapshot is None or self._snapshot[0] != self._ticks:
            self._snapshot = (self._ticks, sse("snapshot", self.snapshot()))
        return self._snapshot[1]

    def detail(self, stream_id: str) -> dict[str, Any] | None:
        """One stream: its full status, latest window (21 named features) and timeline."""
        tr = self._tracks.get(stream_id)
        if tr is None:
            return None
        return {
            "id": stream_id,
            "status": tr.status,
            "latest": None if tr.latest is None else _latest(tr.latest),
            "points": list(tr.points),
            "alerts": list(tr.alerts),
            "marks": list(tr.marks),
        }
__all__ = ["THETA_MEAN", "LiveFeed", "StatusLister"]
