"""An in-memory sink for tests and benchmarks: keeps every score and event."""

from __future__ import annotations

import asyncio
from typing import Any

from ...types import StreamScore
from ..alerts import AlertEvent, StateEvent, StreamEvent
from .base import BufferedSink, Item


class MemorySink(BufferedSink):
    """Collects scores and events in lists; :meth:`wait_for` waits for a count."""

    name = "memory"

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.scores: list[StreamScore] = []
        self.events: list[AlertEvent] = []
        self.changes: list[StreamEvent] = []
        """Who changed what (``control``, ``acknowledged``), apart from the alerts."""
        self.states: list[StateEvent] = []
        """The streams' state changes as published (within their budgets)."""
        self._changed = asyncio.Event()

    async def write(self, items: list[Item]) -> None:
        """Append to the lists."""
        for it in items:
            if isinstance(it, StreamScore):
                self.scores.append(it)
            elif isinstance(it, AlertEvent):
                self.events.append(it)
            elif isinstance(it, StateEvent):
                self.states.append(it)
            else:
                self.changes.append(it)
        self._changed.set()

    async def wait_for(self, n_scores: int, timeout_s: float, stream: str | None = None) -> bool:
        """Wait until ``n_scores`` scores (of ``stream``, if given) are written."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            have = sum(1 for s in self.scores if stream is None or s.stream_id == stream)
            if have >= n_scores:
                return True
            left = deadline - loop.time()
            if left <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), left)
            except TimeoutError:
                return False
