"""Alert hysteresis on a stream's rolling P(AI): pure logic, no I/O; and the events
that go with alerts on ``restrav:events`` (:class:`StreamEvent`: who changed a stream or
acknowledged an alert; :class:`StateEvent`: a stream's state changed), with the per-stream
budget that keeps a flapping feed from flooding them (:class:`EventBudget`).

An alert starts when P(AI) has stayed at or above ``enter`` for at least
``min_duration_s`` (on the caller's clock) and ends when P(AI) falls below
``leave`` (``leave <= enter``), so a score hovering around one threshold does
not flap. Windows without a score (no classifier) change nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """An alert transition of one stream: ``kind`` is ``alert_start`` or ``alert_end``.

    ``fence``: the owner's fencing token (None without leases), as on scores."""

    stream_id: str
    kind: str
    p_ai: float
    at: float
    since: float
    fence: int | None = None
    reason: str | None = None
    """Why an alert ended without a low score (``paused``, ``stopped``, ...); None otherwise."""
    evidence: str | None = None
    """The id of the evidence record of an ``alert_start`` (``GET /evidence/{id}``); None
    when evidence is off for the stream."""

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to the events stream (``reason``, ``evidence`` only when
        set)."""
        out: dict[str, Any] = {
            "stream": self.stream_id,
            "kind": self.kind,
            "p_ai": self.p_ai,
            "at": round(self.at, 6),
            "since": round(self.since, 6),
        }
        if self.reason is not None:
            out["reason"] = self.reason
        if self.evidence is not None:
            out["evidence"] = self.evidence
        return out


class AlertTracker:
    """Hysteresis state of one stream (see the module docstring)."""

    def __init__(self, stream_id: str, enter: float, leave: float, min_duration_s: float) -> None:
        if leave > enter:
            raise ValueError(f"leave ({leave}) must be <= enter ({enter})")
        self.stream_id = stream_id
        self.enter = enter
        self.leave = leave
        self.min_duration_s = min_duration_s
        self.active = False
        self._above_since: float | None = None
        self._active_since = 0.0
        self._last_p_ai = 0.0

    def reset(self, at: float, reason: str) -> AlertEvent | None:
        """Forget the hysteresis (the stream stopped being watched: paused, no publisher,
        removed). Returns the ``alert_end`` of an active alert, with ``reason``, else None."""
        was_active = self.active
        self.active = False
        self._above_since = None
        if not was_active:
            return None
        return AlertEvent(
            self.stream_id, "alert_end", self._last_p_ai, at, self._active_since, reason=reason
        )

    def update(self, p_ai: float | None, at: float) -> AlertEvent | None:
        """Feed one score at time ``at`` (seconds); return a transition or None."""
        if p_ai is None:
            return None
        self._last_p_ai = p_ai
        if self.active:
            if p_ai < self.leave:
                self.active = False
                self._above_since = None
                return AlertEvent(self.stream_id, "alert_end", p_ai, at, self._active_since)
            return None
        if p_ai >= self.enter:
            if self._above_since is None:
                self._above_since = at
            if at - self._above_since >= self.min_duration_s:
                self.active = True
                self._active_since = at
                return AlertEvent(self.stream_id, "alert_start", p_ai, at, self._above_since)
        else:
            self._above_since = None
        return None


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """Who did what to a stream, for ``restrav:events``: ``kind`` is ``control`` (a change
    through the API: ``action`` is ``created``, ``replaced``, ``removed``, ``paused`` or
    ``resumed``) or ``acknowledged`` (an alert's ``evidence`` was reviewed). ``by`` is
    the name of the token that made it, never the token."""

    stream_id: str
    kind: str
    at: float
    by: str
    action: str | None = None
    evidence: str | None = None
    fence: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to the events stream (``action``, ``evidence`` when set)."""
        out: dict[str, Any] = {"stream": self.stream_id, "kind": self.kind,
                               "at": round(self.at, 6), "by": self.by}
        if self.action is not None:
            out["action"] = self.action
        if self.evidence is not None:
            out["evidence"] = self.evidence
        return out


@dataclass(frozen=True, slots=True)
class StateEvent:
    """A stream's state changed, as this replica's serve saw it (``running``, ``stalled``,
    ``reconnecting``, ``paused``, ``stopped``, ``failed``; not ``starting``, which is
    always followed by one of these): ``previous`` the
    state it left, ``reason`` why it stopped or failed (``deleted``, ``replaced``,
    ``shutdown``, an error code) when known, ``suppressed`` how many changes of this
    stream were not published just before it (its :class:`EventBudget` ran out)."""

    stream_id: str
    state: str
    at: float
    previous: str | None = None
    reason: str | None = None
    suppressed: int = 0
    fence: int | None = None
    """Always None: state events are written unfenced (what a replica saw, even one that
    just lost the stream, is true of that replica)."""

    @property
    def kind(self) -> str:
        """``state``, as the events stream names it."""
        return "state"

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to the events stream (``previous``, ``reason`` and
        ``suppressed`` only when set)."""
        out: dict[str, Any] = {"stream": self.stream_id, "kind": "state", "state": self.state,
                               "at": round(self.at, 6)}
        if self.previous is not None:
            out["previous"] = self.previous
        if self.reason is not None:
            out["reason"] = self.reason
        if self.suppressed:
            out["suppressed"] = self.suppressed
        return out


class EventBudget:
    """A token bucket for one stream's state events: ``burst`` at once, then one more
    every ``refill_s``; :meth:`take` says whether an event at time ``at`` may go out and
    counts those that may not (:attr:`suppressed`, reset by :meth:`pop_suppressed`).
    ``burst`` 0 publishes none."""

    def __init__(self, burst: int, refill_s: float) -> None:
        self.burst = burst
        self.refill_s = refill_s
        self.tokens = float(burst)
        self.suppressed = 0
        self._last: float | None = None

    def take(self, at: float) -> bool:
        """Spend one token for an event at ``at`` (seconds); False (counted) when none."""
        if self._last is not None and at > self._last:
            self.tokens = min(float(self.burst), self.tokens + (at - self._last) / self.refill_s)
        self._last = at if self._last is None else max(self._last, at)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.suppressed += 1
        return False

    def pop_suppressed(self) -> int:
        """Events suppressed since the last call."""
        n, self.suppressed = self.suppressed, 0
        return n


Event = AlertEvent | StreamEvent | StateEvent
"""Everything sinks put on ``restrav:events``."""
