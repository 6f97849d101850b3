"""The recent events for the operator page's event log: every replica's from Redis,
or this process's from memory.

Contract: :class:`EventLog` is a sink that ignores scores and keeps the last
``max_events`` events it is given (alert starts and ends, control changes,
acknowledgements, state changes) in arrival order, each as its ``to_json()`` with a per-process
sequence number ``n`` (for pages to tell new rows from old). Bounded, O(1) per event,
never blocks, nothing written anywhere.

:meth:`EventLog.recent` returns the newest first. Given a Redis ``client`` (serve with
a Redis sink), it reads ``restrav:events`` (``XREVRANGE ... COUNT limit``: what every
replica's sink wrote, so a page on any replica lists every stream's alerts and who
acknowledged them), with ``n`` the entry id and the numbers and the fence parsed back;
when that read fails it answers from memory (this process's events) and says so in
``source``. Without a client it answers from memory.
"""

from __future__ import annotations

import collections
from typing import Any

from redis.exceptions import RedisError

from ... import keys
from ...types import StreamScore
from ..alerts import Event

_FLOATS = ("p_ai", "at", "since")
"""Event fields stored as strings that the page reads as numbers."""


class EventLog:
    """A bounded in-memory list of recent events (see the module docstring)."""

    name = "eventlog"

    def __init__(self, max_events: int = 500, client: Any = None) -> None:
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=max_events)
        self._n = 0
        self.client = client
        """An async Redis client to read ``restrav:events`` from, or None (memory)."""

    def publish(self, score: StreamScore) -> None:
        """Scores are not events: ignored."""

    def publish_event(self, event: Event) -> None:
        """Keep ``event`` (the oldest goes beyond ``max_events``)."""
        self._n += 1
        self._events.append({"n": self._n, **event.to_json()})

    async def recent(self, limit: int) -> tuple[list[dict[str, Any]], str]:
        """At most ``limit`` events, newest first, and where they come from: ``redis``
        (every replica's) or ``memory`` (this process's; no client, or Redis failed)."""
        if self.client is not None:
            try:
                entries = await self.client.xrevrange(keys.EVENTS, count=limit)
            except (RedisError, OSError):
                pass  # an outage: this process's own events are better than none
            else:
                return [_parsed(eid, fields) for eid, fields in entries], "redis"
        return self.memory(limit), "memory"

    def memory(self, limit: int) -> list[dict[str, Any]]:
        """At most ``limit`` of this process's events, newest first."""
        out: list[dict[str, Any]] = []
        for ev in reversed(self._events):
            if len(out) >= limit:
                break
            out.append(ev)
        return out

    async def start(self) -> None:
        """Nothing to start."""

    async def flush(self, timeout_s: float) -> bool:
        """Nothing to write: True."""
        return True

    async def aclose(self) -> None:
        """Nothing to close."""


def _text(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _parsed(entry_id: Any, fields: dict[Any, Any]) -> dict[str, Any]:
    """One ``restrav:events`` entry as the page reads it (``to_json()``'s shape, with
    ``n`` the entry id, and ``owner``/``fence`` when a replica with leases wrote it;
    ``suppressed`` an integer)."""
    out: dict[str, Any] = {"n": _text(entry_id)}
    for k, v in fields.items():
        name, text = _text(k), _text(v)
        if name in _FLOATS:
            try:
                out[name] = float(text) if text else None
            except ValueError:
                out[name] = None
        elif name in ("fence", "suppressed") and text.isdigit():
            out[name] = int(text)
        else:
            out[name] = text
    return out
