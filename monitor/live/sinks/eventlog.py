"""The recent events of this process, kept in memory for the operator page's event log.

Contract: :class:`EventLog` is a sink that ignores scores and keeps the last
``max_events`` events it is given (alert starts and ends, control changes,
acknowledgements) in arrival order; :meth:`EventLog.recent` returns the newest first,
each as its ``to_json()`` with a per-process sequence number ``n`` (for pages to tell
new rows from old). Bounded, O(1) per event, never blocks, nothing written anywhere:
with several replicas each one lists the events of the streams it runs (Redis
``restrav:events`` holds them all).
"""

from __future__ import annotations

import collections
from typing import Any

from ...types import StreamScore
from ..alerts import Event


class EventLog:
    """A bounded in-memory list of recent events (see the module docstring)."""

    name = "eventlog"

    def __init__(self, max_events: int = 500) -> None:
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=max_events)
        self._n = 0

    def publish(self, score: StreamScore) -> None:
        """Scores are not events: ignored."""

    def publish_event(self, event: Event) -> None:
        """Keep ``event`` (the oldest goes beyond ``max_events``)."""
        self._n += 1
        self._events.append({"n": self._n, **event.to_json()})

    def recent(self, limit: int) -> list[dict[str, Any]]:
        """At most ``limit`` events, newest first."""
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
