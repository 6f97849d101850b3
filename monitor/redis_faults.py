"""Which Redis errors mean "Redis cannot take writes now" (an outage), not a bug.

A Redis that answers but refuses writes is as unavailable as one that does not
answer: ``maxmemory`` reached under ``noeviction`` (``OOM``), a read-only
replica (``READONLY``, e.g. after its master died and before a failover), a
replica that lost its master (``MASTERDOWN``), a dataset still loading
(``LOADING``), a busy script (``BUSY``), too few replicas or a failed
snapshot (``NOREPLICAS``, ``MISCONF``), a cluster in flux (``TRYAGAIN``,
``CLUSTERDOWN``, a slot without a primary, a ``MOVED`` redis-py could not follow),
or a write its replicas did not acknowledge in time (:class:`NotReplicated`,
``NOTREPLICATED``). Writers treat these like a lost connection: not ready,
buffer, retry with backoff, flush when Redis takes writes again.

Where redis-py puts the code (each case seen from a real redis-server):

- a code redis-py knows (``OOM``, ``READONLY``, ``LOADING``, ...) becomes an
  exception class (:data:`REFUSAL_CLASSES`) and is stripped from the message;
  the class survives a pipeline;
- any other code arrives as a plain ``ResponseError`` whose message starts with
  it (``NOREPLICAS Not enough good replicas to write.``);
- inside MULTI/EXEC (and any pipeline) redis-py rewrites the message of the
  failed command's error to ``Command # 1 (XADD …) of pipeline caused error:
  ('NOREPLICAS …',)``, the original arguments as a tuple's repr;
- a refused EXEC arrives as ``ExecAbortError("Transaction discarded because
  of: BUSY …")``.

:func:`refusal_code` takes these wrappings off, one layer at a time, and
reads the code of the error reply inside.

A fault of the client, not of the server: redis-py (8.2) can swallow a task's
cancellation that lands while a command is in flight (the command returns normally,
the task runs on). :func:`cancel_and_wait` stops a task that awaits Redis all the same.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import re
from collections.abc import Iterator
from typing import Any

from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterUnreachableError,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


class NotReplicated(RedisError):
    """A write the primary took but too few replicas acknowledged within the WAIT
    timeout (:class:`monitor.redis_conn.Durability`). It may be lost by a failover,
    so it counts as not done: the caller retries it (answers, scores) or gives it up
    (a lease is then not taken; ``submit`` reports the job as not enqueued)."""


_CLASS_CODES: dict[type[Exception], str] = {
    NotReplicated: "NOTREPLICATED",
    OutOfMemoryError: "OOM", ReadOnlyError: "READONLY", MasterDownError: "MASTERDOWN",
    BusyLoadingError: "LOADING", TryAgainError: "TRYAGAIN", ClusterDownError: "CLUSTERDOWN",
}

REFUSAL_CLASSES: tuple[type[Exception], ...] = tuple(_CLASS_CODES)
"""redis-py's classes for temporary refusals."""

REFUSAL_CODES = frozenset(
    {"BUSY", "NOREPLICAS", "MISCONF", *_CLASS_CODES.values()}
)
"""Error-reply codes of temporary refusals, wherever they appear in a ``ResponseError``."""

_PIPELINE_ERROR = re.compile(r"Command # \d+ \(.*\) of pipeline caused error: (?P<inner>.*)", re.S)
"""redis-py's annotation of a pipeline command's error (greedy: the last such marker)."""

_EXEC_ABORT = re.compile(r"(?:EXECABORT )?Transaction discarded because of: (?P<inner>.*)", re.S)
"""Redis's reply to a refused EXEC (redis-py strips the ``EXECABORT`` code)."""

_MAX_LAYERS = 4


def _unwrap(text: str) -> str | None:
    """The error text ``text`` wraps (a pipeline annotation or an EXECABORT), or None."""
    m = _PIPELINE_ERROR.match(text) or _EXEC_ABORT.match(text)
    if m is None:
        return None
    inner = m["inner"]
    # redis-py >= 5 writes the original ``exception.args`` tuple; older ones its first item
    try:
        args = ast.literal_eval(inner)
    except (ValueError, SyntaxError, RecursionError, MemoryError):
        return inner
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return inner


def _codes(text: str) -> Iterator[str]:
    """The first word of ``text`` and of each error text it wraps, outermost first."""
    for _ in range(_MAX_LAYERS):
        text = text.lstrip()
        yield text.split(maxsplit=1)[0] if text else ""
        inner = _unwrap(text)
        if inner is None:
            return
        text = inner


def refusal_code(exc: BaseException) -> str | None:
    """The refusal code (one of :data:`REFUSAL_CODES`) ``exc`` carries, or None.

    Found from redis-py's exception class, or read from the message of a
    ``ResponseError``: bare, annotated by a pipeline, or inside an EXECABORT
    (see the module docstring). The command text inside a pipeline annotation
    is never read, so a key or a value that looks like a code does not count.
    """
    for cls, code in _CLASS_CODES.items():
        if isinstance(exc, cls):
            return code
    if not isinstance(exc, ResponseError):
        return None
    return next((c for c in _codes(str(exc)) if c in REFUSAL_CODES), None)


def write_refused(exc: BaseException) -> bool:
    """True when ``exc`` is Redis refusing a write for now (retry later), not a bug."""
    return refusal_code(exc) is not None


_CLUSTER_IN_FLUX: tuple[type[Exception], ...] = (
    RedisClusterUnreachableError, SlotNotCoveredError, AskError,
)
"""redis-py's Redis Cluster errors of a cluster failing over: no node reachable, a
slot with no primary yet, a redirection (``MOVED``/``ASK``, :class:`AskError` is the
base of both) still there after redis-py's own retries. The first two are no
:class:`RedisError`: callers that catch only that must catch these as well."""


def redis_unavailable(exc: BaseException) -> bool:
    """True for a lost connection, a timeout, a refused write or a cluster in flux: an
    outage to ride out."""
    return isinstance(
        exc, (RedisConnectionError, RedisTimeoutError, OSError, *_CLUSTER_IN_FLUX)
    ) or write_refused(exc)


async def cancel_and_wait(task: asyncio.Task[Any], recancel_s: float = 0.1) -> None:
    """Cancel ``task`` and return once it has ended (its cancellation suppressed; any
    other exception it ended with is raised, as ``await task`` would).

    A single ``cancel()`` is not enough for a task that awaits redis-py: a cancellation
    that lands while a command is in flight can be swallowed (redis-py 8.2: the command
    returns its reply and the task runs on, ``cancelling()`` still 1; in about 9 of 10
    cancels one to three loop turns into an ``EVAL``, tests/test_redis_conn.py). A
    renewal loop then sleeps to its next turn as if never cancelled, and whoever
    awaits it waits forever: ``serve`` hung in its drain that way, under load, where a
    command spans more loop turns (BENCHMARKS.md, issue 25). So ``task`` is cancelled
    again every ``recancel_s`` while it still runs."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=recancel_s)
    with contextlib.suppress(asyncio.CancelledError):
        await task


__all__ = [
    "REFUSAL_CLASSES", "REFUSAL_CODES", "NotReplicated", "cancel_and_wait", "redis_unavailable",
    "refusal_code", "write_refused",
]
