"""The queue as producers and operators see it: connect, enqueue, results, stats, trimming."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis

from .. import keys
from ..config import QueueSettings
from ..redis_conn import Durability, key_pipeline, redis_client, run_key_pipeline
from .jobs import Job, QueueFull, entry_ms


def connect(url: str, timeout_s: float = 2.0, read_timeout_s: float | None = None) -> redis.Redis:
    """A Redis client (decoded strings) for the queue; ``url`` in any form of
    :mod:`monitor.redis_conn` (one server or Sentinel).

    ``read_timeout_s`` bounds the wait for each reply (None: unbounded). It must exceed
    the longest blocking command (``XREADGROUP BLOCK``, ``WAIT``); with it, a Redis that
    stops answering without closing the connection (frozen, partitioned) is a
    ``TimeoutError`` after that long, and the next try reconnects (with Sentinel: to
    the primary the sentinels name then)."""
    return redis_client(
        url,
        decode_responses=True,
        socket_connect_timeout=timeout_s,
        socket_timeout=read_timeout_s,
        health_check_interval=30,
    )


def ensure_group(client: redis.Redis, group: str) -> None:
    """Create the consumer group (and the stream) if missing; from the stream's start."""
    try:
        client.xgroup_create(keys.JOBS, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def is_nogroup(exc: BaseException) -> bool:
    """True for Redis's ``NOGROUP`` error: the stream or its consumer group is gone
    (Redis restarted without its data, or someone deleted them)."""
    return isinstance(exc, redis.ResponseError) and str(exc).startswith("NOGROUP")


def backlog(client: redis.Redis, group: str) -> int:
    """Jobs not yet finished: undelivered plus pending in ``group`` (XLEN if no group)."""
    try:
        groups = client.xinfo_groups(keys.JOBS)
    except redis.ResponseError:
        return 0
    for g in groups:
        if g["name"] == group:
            lag = g.get("lag")
            lag_n = int(lag) if lag is not None else int(client.xlen(keys.JOBS))
            return lag_n + int(g["pending"])
    return int(client.xlen(keys.JOBS))


def enqueue(
    client: redis.Redis, job: Job, settings: QueueSettings, durability: Durability | None = None
) -> str:
    """Append ``job`` to the queue; return its entry id. Raises :class:`QueueFull`.

    With ``durability`` enabled the XADD and a ``WAIT`` go in one pipeline, and too
    few replica acknowledgements raise :class:`~monitor.redis_faults.NotReplicated`:
    the job may be lost by a failover, so it is not enqueued as far as the caller
    knows (it may be there: enqueue it again under the same job id, which answers it
    once).
    """
    if backlog(client, settings.group) >= settings.max_queue_length:
        raise QueueFull(
            f"the queue holds {settings.max_queue_length} unfinished jobs "
            "(queue.max_queue_length); try again later or add workers"
        )
    fields: Any = {keys.JOB_FIELD: job.model_dump_json()}
    if durability is None or not durability.enabled:
        entry_id: Any = client.xadd(keys.JOBS, fields)
        return str(entry_id)
    pipe = key_pipeline(client, keys.JOBS)  # on a cluster: WAIT on the stream's node
    pipe.xadd(keys.JOBS, fields)
    durability.queue_wait(pipe)
    entry_id, acked = run_key_pipeline(client, pipe)
    durability.check(acked, f"job {job.job_id} enqueued as {entry_id}")
    return str(entry_id)


def get_result(client: redis.Redis, job_id: str) -> dict[str, Any] | None:
    """The stored result of a job id, or None."""
    raw = client.get(keys.result_key(job_id))
    return json.loads(raw) if raw else None


def wait_results(
    client: redis.Redis, reply_to: str, job_ids: set[str], timeout_s: float
) -> Iterator[dict[str, Any]]:
    """Yield results for ``job_ids`` from a reply stream as they arrive, until all came
    or ``timeout_s`` passed (then the rest are simply not yielded)."""
    waiting = set(job_ids)
    last = "0"
    deadline = time.monotonic() + timeout_s
    while waiting:
        left_ms = int((deadline - time.monotonic()) * 1000)
        if left_ms <= 0:
            return
        resp: Any = client.xread({reply_to: last}, count=100, block=min(left_ms, 1000))
        for _, entries in resp or []:
            for entry_id, fields in entries:
                last = entry_id
                result = json.loads(fields["result"])
                if result.get("job_id") in waiting:
                    waiting.discard(result["job_id"])
                    yield result


def _next_id(entry_id: str) -> str:
    ms, seq = entry_id.split("-", 1)
    return f"{ms}-{int(seq) + 1}"


def trim_jobs(client: redis.Redis) -> int:
    """Trim the job stream below the oldest entry any group still needs; return removed.

    For every group the bound is its oldest pending entry, or the entry after its
    last-delivered id when nothing is pending: entries before it are all
    acknowledged. ``MINID ~`` removes whole macro nodes only, so it never removes
    more than that. Without groups nothing is trimmed.
    """
    try:
        groups = client.xinfo_groups(keys.JOBS)
    except redis.ResponseError:
        return 0
    if not groups:
        return 0
    bounds: list[tuple[int, int]] = []
    for g in groups:
        summary = client.xpending(keys.JOBS, g["name"])
        pending_min = str(summary["min"]) if summary["pending"] and summary["min"] else None
        bound = pending_min or _next_id(str(g["last-delivered-id"]))
        ms, seq = bound.split("-", 1)
        bounds.append((int(ms), int(seq)))
    low_ms, low_seq = min(bounds)
    removed: Any = client.xtrim(keys.JOBS, minid=f"{low_ms}-{low_seq}", approximate=True)
    return int(removed)


@dataclass(frozen=True)
class QueueStats:
    """A snapshot of the queue for one group."""

    length: int
    lag: int
    pending: int
    oldest_pending_age_s: float
    dead: int
    group_exists: bool = True
    """False when the consumer group is missing: every entry then counts as lag."""


def queue_stats(client: redis.Redis, group: str, now_s: float | None = None) -> QueueStats:
    """Length, lag, pending count, oldest pending age and dead letters of the queue."""
    now_s = time.time() if now_s is None else now_s
    length = int(client.xlen(keys.JOBS))
    lag = pending = 0
    age = 0.0
    found = False
    try:
        groups = client.xinfo_groups(keys.JOBS)
    except redis.ResponseError:
        groups = []
    for g in groups:
        if g["name"] == group:
            found = True
            lag = int(g["lag"]) if g.get("lag") is not None else length
            pending = int(g["pending"])
            if pending:
                # read separately: the job may be acknowledged in between (min is then None)
                summary = client.xpending(keys.JOBS, group)
                if summary["pending"] and summary["min"]:
                    age = max(0.0, now_s - entry_ms(str(summary["min"])) / 1000.0)
    if not found:
        lag = length  # no group: nothing was delivered as far as Redis knows
    return QueueStats(length, lag, pending, age, int(client.xlen(keys.JOBS_DEAD)), found)
