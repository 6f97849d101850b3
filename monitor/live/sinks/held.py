"""Publishing a batch of scores at once: :class:`BatchPublisher` holds what a batch's
score callbacks publish and queues it in the sink when the batch ends."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import cast

from ...types import StreamScore
from ..alerts import Event
from .base import Item, Sink


class BatchPublisher:
    """Publishes scores and events to ``sink``; within :meth:`batch` they are held, in
    order, and queued when it ends: each run of scores with one
    :meth:`~monitor.live.sinks.base.Sink.publish_many` (one wake-up and one gauge update
    per sink, not one per score), an event between them with ``publish_event``, so
    the sink receives everything in the order it was published. A sink's failure is not
    caught here: serve's sink is the fan-out (:class:`~.fanout.FanoutSink`), the
    boundary that counts and logs each sink's failure and reaches the others."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self._held: list[Item] | None = None

    def publish(self, score: StreamScore) -> None:
        """Queue ``score`` (held within a batch)."""
        if self._held is None:
            self.sink.publish(score)
        else:
            self._held.append(score)

    def publish_event(self, event: Event) -> None:
        """Queue ``event`` (held within a batch)."""
        if self._held is None:
            self.sink.publish_event(event)
        else:
            self._held.append(event)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Hold what is published until the block ends (nested: the outer block's)."""
        if self._held is not None:
            yield
            return
        held: list[Item] = []
        self._held = held
        try:
            yield
        finally:
            self._held = None
            self._queue(held)

    def _queue(self, held: list[Item]) -> None:
        start = 0
        for i, it in enumerate(held):
            if not isinstance(it, StreamScore):
                self._queue_scores(held[start:i])
                start = i + 1
                self.sink.publish_event(it)
        self._queue_scores(held[start:])

    def _queue_scores(self, scores: list[Item]) -> None:
        if scores:
            self.sink.publish_many(cast(list[StreamScore], scores))
