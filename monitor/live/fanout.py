"""The page's event-stream clients: a bounded Server-Sent Events fan-out.

:class:`Fanout` holds at most ``max_clients`` subscribers
(``restrav_ui_clients_refused_total{reason="too_many"}`` beyond), each a
:class:`Subscriber` with a queue of at most ``client_buffer_messages`` encoded
messages. :meth:`Fanout.broadcast` offers a message (serialised once) to every
subscriber and never blocks: a subscriber that falls that far behind is dropped,
its connection aborted, and counted (``restrav_ui_clients_dropped_total{reason="slow"}``).
:meth:`Fanout.drain` says ``bye`` to every client, ends their responses and aborts
those that do not take it within a deadline; later clients are refused.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from ..config import UiSettings
from ..metrics import LiveFeedMetrics

log = logging.getLogger("restrav.ui")

_DRAIN_DEADLINE_S = 2.0


class Subscriber:
    """One event-stream client: a bounded queue of encoded messages.

    :meth:`offer` never blocks: it returns False when the queue is full (the
    caller drops the client). :meth:`get` returns None once the subscriber is
    closed and its queue is empty.
    """

    def __init__(self, max_messages: int) -> None:
        self.max_messages = max_messages
        self._queue: collections.deque[bytes] = collections.deque()
        self._wake = asyncio.Event()
        self.closed = False
        self.abort: Callable[[], None] | None = None
        """Set by the HTTP handler: closes the connection at once (a dropped client)."""

    @property
    def queued(self) -> int:
        """Messages waiting to be written."""
        return len(self._queue)

    def offer(self, msg: bytes) -> bool:
        """Queue ``msg``; False (nothing queued) when full or closed."""
        if self.closed or len(self._queue) >= self.max_messages:
            return False
        self._queue.append(msg)
        self._wake.set()
        return True

    def close(self, last: bytes | None = None) -> None:
        """No more messages after ``last`` (queued past the bound: a goodbye)."""
        if last is not None and not self.closed:
            self._queue.append(last)
        self.closed = True
        self._wake.set()

    async def get(self) -> bytes | None:
        """The next message; None when closed and drained."""
        while not self._queue:
            if self.closed:
                return None
            self._wake.clear()
            await self._wake.wait()
        return self._queue.popleft()


def sse(event: str, data: Any) -> bytes:
    """One Server-Sent Events message (``data`` as compact JSON on one line)."""
    body = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return f"event: {event}\ndata: {body}\n\n".encode()


class Fanout:
    """The subscribers of one live feed (see the module docstring)."""

    def __init__(self, settings: UiSettings, metrics: LiveFeedMetrics | None) -> None:
        self.settings = settings
        self.metrics = metrics
        self._subs: set[Subscriber] = set()
        self.draining = False
        self.dropped = 0
        self.refused = 0
        self.messages = 0

    def subscribe(self) -> Subscriber | str:
        """A new subscriber, or the reason it is refused (``too_many``, ``draining``)."""
        reason = None
        if self.draining:
            reason = "draining"
        elif len(self._subs) >= self.settings.max_clients:
            reason = "too_many"
        if reason is not None:
            self.refused += 1
            if self.metrics is not None:
                self.metrics.clients_refused.labels(reason).inc()
            return reason
        sub = Subscriber(self.settings.client_buffer_messages)
        self._subs.add(sub)
        self._count_clients()
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        """Forget ``sub`` (its connection ended)."""
        sub.close()
        self._subs.discard(sub)
        self._count_clients()

    @property
    def clients(self) -> int:
        """Subscribers now."""
        return len(self._subs)

    def _count_clients(self) -> None:
        if self.metrics is not None:
            self.metrics.clients.set(len(self._subs))

    def drop(self, sub: Subscriber, reason: str) -> None:
        """Disconnect ``sub`` now (counted by ``reason``)."""
        if sub not in self._subs:
            return
        self.dropped += 1
        if self.metrics is not None:
            self.metrics.clients_dropped.labels(reason).inc()
        log.warning("ui event stream: a client was dropped (%s, %d messages behind)",
                    reason, sub.queued)
        self.unsubscribe(sub)
        if sub.abort is not None:
            sub.abort()

    def broadcast(self, msg: bytes) -> None:
        """Offer ``msg`` to every subscriber; one whose queue is full is dropped (slow)."""
        self.messages += 1
        if self.metrics is not None:
            self.metrics.messages.inc()
        for sub in list(self._subs):
            if not sub.offer(msg):
                self.drop(sub, "slow")

    async def drain(self, reason: str = "draining") -> None:
        """Tell every client ``bye`` and close; abort those still writing after a deadline."""
        if self.draining and not self._subs:
            return
        self.draining = True
        bye = sse("bye", {"reason": reason})
        subs = list(self._subs)
        for sub in subs:
            sub.close(bye)
        deadline = time.monotonic() + _DRAIN_DEADLINE_S
        while self._subs and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for sub in list(self._subs):
            self.drop(sub, "write_timeout")


__all__ = ["Fanout", "Subscriber", "sse"]
