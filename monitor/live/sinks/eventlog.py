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

Given ``kinds`` (a subset of :data:`KINDS`), only events of those kinds are returned: from
Redis, ``restrav:events`` is read newest first in pages until ``limit`` of them are found
or :data:`SCAN_BOUND` entries were read (so a burst of state changes cannot hide an
alert from a page that asks for alerts, and one request reads a bounded amount).
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

from redis.exceptions import RedisError

from ... import keys
from ...types import StreamScore
from ..alerts import Event

_FLOATS = ("p_ai", "at", "since")
"""Event fields stored as strings that the page reads as numbers."""

KINDS = frozenset({"alert_start", "alert_end", "control", "acknowledged", "state"})
"""Every ``kind`` an event on ``restrav:events`` has."""

SCAN_BOUND = 5000
"""Most ``restrav:events`` entries one filtered :meth:`EventLog.recent` reads."""

_PAGE = 500
"""Entries per XREVRANGE of a filtered read."""


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

    def publish_many(self, scores: Sequence[StreamScore]) -> None:
        """Scores are not events: ignored."""

    def publish_event(self, event: Event) -> None:
        """Keep ``event`` (the oldest goes beyond ``max_events``)."""
        self._n += 1
        self._events.append({"n": self._n, **event.to_json()})

    async def recent(self, limit: int, kinds: frozenset[str] | None = None
                     ) -> tuple[list[dict[str, Any]], str]:
        """At most ``limit`` events (of ``kinds`` only, when given), newest first, and
        where they come from: ``redis`` (every replica's) or ``memory`` (this process's;
        no client, or Redis failed)."""
        if self.client is not None:
            try:
                if kinds is None:
                    entries = await self.client.xrevrange(keys.EVENTS, count=limit)
                    return [_parsed(eid, fields) for eid, fields in entries], "redis"
                return await self._scan(limit, kinds), "redis"
            except (RedisError, OSError):
                pass  # an outage: this process's own events are better than none
        return self.memory(limit, kinds), "memory"

    async def _scan(self, limit: int, kinds: frozenset[str]) -> list[dict[str, Any]]:
        """Newest first, pages of ``restrav:events`` until ``limit`` events of ``kinds``
        or :data:`SCAN_BOUND` entries read."""
        out: list[dict[str, Any]] = []
        top: Any = "+"
        read = 0
        while len(out) < limit and read < SCAN_BOUND:
            page = await self.client.xrevrange(keys.EVENTS, max=top,
                                               count=min(_PAGE, SCAN_BOUND - read))
            for eid, fields in page:
                event = _parsed(eid, fields)
                if event.get("kind") in kinds and len(out) < limit:
                    out.append(event)
            read += len(page)
            if len(page) < _PAGE:
                break  # the stream's oldest entry was read
            top = "(" + _text(page[-1][0])  # exclusive: continue below the last one read
        return out

    def memory(self, limit: int, kinds: frozenset[str] | None = None) -> list[dict[str, Any]]:
        """At most ``limit`` of this process's events (of ``kinds``, when given), newest
        first."""
        out: list[dict[str, Any]] = []
        for ev in reversed(self._events):
            if len(out) >= limit:
                break
            if kinds is None or ev.get("kind") in kinds:
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
