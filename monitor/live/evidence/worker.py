"""One daemon thread draining one bounded queue: what the capture and the writer share.

Contract: :meth:`QueueThread.put` never blocks (False when the queue is full: the caller
counts the drop); the thread calls :meth:`QueueThread.handle` for each item in order;
:meth:`QueueThread.stop` lets the queued items finish, within a deadline;
:meth:`QueueThread.idle` is True when nothing waits or runs.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Generic, TypeVar

log = logging.getLogger("restrav.evidence")

T = TypeVar("T")


class QueueThread(Generic[T]):
    """A bounded queue and the thread that handles its items (see the module docstring)."""

    name = "evidence"

    def __init__(self, queue_max: int) -> None:
        self._queue: queue.Queue[T | None] = queue.Queue(queue_max)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Handle the queued items and stop, within ``timeout_s``."""
        t, self._thread = self._thread, None
        if t is None:
            return
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            log.warning("%s did not stop: its queue stayed full", self.name)
            return
        t.join(timeout_s)

    def idle(self) -> bool:
        """True when no item waits or is being handled (for tests and benchmarks)."""
        return self._queue.unfinished_tasks == 0

    def put(self, item: T) -> bool:
        """Queue ``item``; False (nothing queued) when the queue is full. Never blocks."""
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            return False
        return True

    def setup(self) -> None:
        """Runs first on the thread."""

    def handle(self, item: T) -> None:
        """Runs on the thread for each item."""
        raise NotImplementedError

    def _run(self) -> None:
        self.setup()
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self.handle(item)
            finally:
                self._queue.task_done()
