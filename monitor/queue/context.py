"""What the parts of a worker share: its Redis client, settings, metrics, name, and the
set of entries in flight (guarded by one mutex)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import redis

from ..config import QueueSettings
from ..metrics import QueueMetrics
from ..redis_conn import Durability
from .jobs import Entry


@dataclass
class WorkerContext:
    """State shared by a worker's leases, reclaim, execution and answers.

    ``inflight`` maps entry ids to the entries being worked on; ``released`` holds
    the ids handed back at shutdown (their late answers are dropped); both under
    ``mutex``. ``failing_since`` is the wall time of the first of the read loop's
    current run of failures (None while it works): the heartbeat carries it, so
    ``worker --check`` reports a worker that only loops on errors.
    """

    client: redis.Redis
    settings: QueueSettings
    metrics: QueueMetrics
    name: str
    mutex: threading.Lock = field(default_factory=threading.Lock)
    inflight: dict[str, Entry] = field(default_factory=dict)
    released: set[str] = field(default_factory=set)
    done: int = 0
    loop_at: float = field(default_factory=time.time)
    started_at: float = field(default_factory=time.time)
    failing_since: float | None = None
    last_error: str | None = None
    durability: Durability = field(default_factory=Durability)
    """The WAIT after each answer (off by default: one Redis)."""

    @property
    def group(self) -> str:
        """The consumer group."""
        return self.settings.group

    @property
    def visibility_ms(self) -> int:
        """The visibility timeout in milliseconds."""
        return int(self.settings.visibility_timeout_s * 1000)

    @property
    def lock_ms(self) -> int:
        """A job id lock's TTL: it expires before the lease can be reclaimed, so a
        reclaiming worker finds it free."""
        return max(1, int(self.settings.visibility_timeout_s * 800))

    def entries(self) -> list[Entry]:
        """A snapshot of the entries in flight."""
        with self.mutex:
            return list(self.inflight.values())
