"""Which Redis errors mean "Redis cannot take writes now" (an outage), not a bug.

A Redis that answers but refuses writes is as unavailable as one that does not
answer: ``maxmemory`` reached under ``noeviction`` (``OOM``), a read-only
replica (``READONLY``, e.g. after its master died and before a failover), a
replica that lost its master (``MASTERDOWN``), a dataset still loading
(``LOADING``), a busy script (``BUSY``), too few replicas or a failed
snapshot (``NOREPLICAS``, ``MISCONF``), or a cluster in flux (``TRYAGAIN``,
``CLUSTERDOWN``). Writers treat these like a lost connection: not ready,
buffer, retry with backoff, flush when Redis takes writes again.

redis-py maps most of these codes to exception classes (and strips the code
from the message, also for a command refused inside MULTI/EXEC); the others
arrive as a plain ``ResponseError`` whose message starts with the code.
"""

from __future__ import annotations

from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

REFUSAL_CLASSES: tuple[type[Exception], ...] = (
    OutOfMemoryError, ReadOnlyError, MasterDownError, BusyLoadingError, TryAgainError,
    ClusterDownError,
)
"""redis-py's classes for temporary refusals."""

REFUSAL_PREFIXES = ("BUSY", "NOREPLICAS", "MISCONF", "OOM", "READONLY", "LOADING", "MASTERDOWN")
"""Error-reply codes of temporary refusals that may arrive as a plain ``ResponseError``."""


def write_refused(exc: BaseException) -> bool:
    """True when ``exc`` is Redis refusing a write for now (retry later), not a bug."""
    if isinstance(exc, REFUSAL_CLASSES):
        return True
    return isinstance(exc, ResponseError) and str(exc).lstrip().startswith(REFUSAL_PREFIXES)


def redis_unavailable(exc: BaseException) -> bool:
    """True for a lost connection, a timeout or a refused write: an outage to ride out."""
    return isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError)) or write_refused(
        exc
    )


__all__ = ["REFUSAL_CLASSES", "REFUSAL_PREFIXES", "redis_unavailable", "write_refused"]
