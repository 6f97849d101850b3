"""Fan-out: one publish, every configured sink; one failing sink never blocks the others."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from ...types import StreamScore
from ..alerts import Event
from .base import Sink

log = logging.getLogger("restrav.sinks")


class FanoutSink:
    """Publishes to each sink in turn; implements :class:`~monitor.live.sinks.base.Sink`."""

    name = "fanout"

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self.sinks = list(sinks)
        self.errors = 0

    def publish(self, score: StreamScore) -> None:
        """Queue the score in every sink."""
        for s in self.sinks:
            try:
                s.publish(score)
            # sink fan-out boundary (sanctioned): one sink's failure is counted and logged
            except Exception:
                self.errors += 1
                log.exception("sink %s failed to queue a score", s.name)

    def publish_many(self, scores: Sequence[StreamScore]) -> None:
        """Queue the scores in every sink (each sink's failure counted once)."""
        for s in self.sinks:
            try:
                s.publish_many(scores)
            # sink fan-out boundary (sanctioned): one sink's failure is counted and logged
            except Exception:
                self.errors += 1
                log.exception("sink %s failed to queue %d scores", s.name, len(scores))

    def publish_event(self, event: Event) -> None:
        """Queue the event in every sink."""
        for s in self.sinks:
            try:
                s.publish_event(event)
            # sink fan-out boundary (sanctioned): one sink's failure is counted and logged
            except Exception:
                self.errors += 1
                log.exception("sink %s failed to queue an event", s.name)

    async def start(self) -> None:
        """Start every sink."""
        for s in self.sinks:
            await s.start()

    async def flush(self, timeout_s: float) -> bool:
        """Flush all sinks concurrently; True if all emptied in time."""
        results = await asyncio.gather(*(s.flush(timeout_s) for s in self.sinks))
        return all(results)

    async def aclose(self) -> None:
        """Close every sink."""
        for s in self.sinks:
            await s.aclose()
