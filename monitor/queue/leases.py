"""Leases: the heartbeat, the job id locks (fencing tokens) and their renewal.

A worker owns an entry while its job id lock (``restrav:lock:{job_id}``) holds
this attempt's token, ``"<worker> <instance> <random>"`` (``instance``: one per
:class:`Leases`, i.e. per running worker). A job id is locked by one entry at a
time, also inside one worker: a second entry with the same job id (a producer's
retry) waits until the first is answered. The heartbeat thread renews, in
one Lua script per entry, the lock's TTL and the entry's idle time (``XCLAIM ...
JUSTID``), and only while the lock still holds the token: a worker paused past
the visibility timeout does not take an entry back from the worker that
reclaimed it. The answer is written under the same condition (see
:mod:`monitor.queue.answers`), and a lock is deleted only by the token it holds.

On Redis Cluster the lock and ``restrav:jobs`` live in different slots: the renewal
checks and extends the lock in one script, and claims the entry after it only when
the lock held the token. A worker paused past the visibility timeout still does not
take an entry back (its lock is gone or another's); the lock changing hands in the
instant between the two steps would give back the entry's idle time to this worker
for one heartbeat, and its answer is still refused (the answer is fenced).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

import redis

from .. import keys
from ..redis_conn import is_cluster
from .context import WorkerContext
from .jobs import Entry
from .ops import queue_stats

log = logging.getLogger("restrav.queue")

# KEYS: 1 jobs stream, 2 lock; ARGV: 1 group, 2 consumer, 3 entry id, 4 token, 5 lock TTL ms
_RENEW = """
if redis.call('GET', KEYS[2]) ~= ARGV[4] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return 1
"""

# Redis Cluster: the lock part of _RENEW (the XCLAIM follows when it returns 1)
# KEYS: 1 lock; ARGV: 1 token, 2 lock TTL ms
_RENEW_LOCK = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: 1 lock; ARGV: 1 token, 2 lock TTL ms, 3 "<worker> ", 4 "<worker> <instance> "
# returns 1 taken, 0 held by another worker or by a live entry of this one
_TAKE = """
local holder = redis.call('GET', KEYS[1])
if holder then
  local mine = string.sub(holder, 1, #ARGV[3]) == ARGV[3]
  if not mine or string.sub(holder, 1, #ARGV[4]) == ARGV[4] then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: 1 lock; ARGV: 1 token; returns 1 deleted, 0 the lock holds another token (or none)
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""


def default_worker_name() -> str:
    """The consumer name when none is given: the host name (stable across restarts)."""
    return socket.gethostname()


def heartbeat_is_fresh(beat: dict[str, Any] | None, now_s: float, interval_s: float) -> bool:
    """True when a heartbeat exists and both its beat and its main loop are recent."""
    if not beat:
        return False
    limit = 3 * interval_s
    return (now_s - float(beat.get("beat_at", 0))) <= limit and (
        now_s - float(beat.get("loop_at", 0))
    ) <= limit + float(beat.get("loop_slack_s", 0))


def read_heartbeat(client: redis.Redis, worker: str) -> dict[str, Any] | None:
    """A worker's last heartbeat, or None when it has expired."""
    raw = client.get(keys.heartbeat_key(worker))
    return json.loads(raw) if raw else None


def worker_health(
    client: redis.Redis, worker: str, group: str, interval_s: float, now_s: float | None = None
) -> tuple[bool, str]:
    """``(healthy, one line)`` for ``worker --check``.

    Unhealthy when the heartbeat is missing or stale, when the worker's read loop
    has failed for more than three heartbeat intervals in a row (it reports the
    last error), or when the consumer group is missing (Redis lost its data).
    """
    now_s = time.time() if now_s is None else now_s
    beat = read_heartbeat(client, worker)
    if not heartbeat_is_fresh(beat, now_s, interval_s):
        return False, f"worker {worker}: no fresh heartbeat"
    assert beat is not None
    failing_since = beat.get("failing_since")
    if failing_since is not None and now_s - float(failing_since) > 3 * interval_s:
        return False, (
            f"worker {worker}: its read loop has failed for {now_s - float(failing_since):.0f} s: "
            f"{beat.get('last_error')}"
        )
    if not queue_stats(client, group, now_s).group_exists:
        return False, (
            f"worker {worker}: consumer group {group!r} of {keys.JOBS} is missing "
            "(Redis restarted without its data?); the worker recreates it on its next read"
        )
    return True, f"worker {worker}: healthy"


class Leases:
    """Takes job id locks and renews leases; writes the heartbeat."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self._renew = ctx.client.register_script(_RENEW)
        self._take = ctx.client.register_script(_TAKE)
        self._release = ctx.client.register_script(_RELEASE)
        self._renew_lock = ctx.client.register_script(_RENEW_LOCK)
        self.cluster = is_cluster(ctx.client)
        self.instance = uuid.uuid4().hex[:12]
        self.stop = threading.Event()

    def take(self, job_id: str) -> str | None:
        """Lock ``job_id`` for one entry; return its fencing token, or None when the
        lock is held by another worker or by another entry of this one.

        A lock left under this worker's name by an earlier instance (the worker
        restarted: nothing renews that lock any more) is taken over at once.
        One atomic step, so two entries can never both get the lock."""
        ctx = self.ctx
        prefix = f"{ctx.name} {self.instance} "
        token = prefix + uuid.uuid4().hex
        taken = self._take(
            keys=[keys.lock_key(job_id)], args=[token, ctx.lock_ms, f"{ctx.name} ", prefix]
        )
        return token if int(taken) else None

    def release(self, job_id: str, token: str, client: redis.Redis | None = None) -> None:
        """Delete ``job_id``'s lock if it still holds ``token`` (compare-and-delete):
        a worker that lost the lock never removes its new owner's. ``client``: a
        pipeline to queue the script on (default: the worker's client; on a cluster always
        the client: redis-py's cluster pipeline does not load scripts)."""
        if self.cluster:
            client = None
        self._release(keys=[keys.lock_key(job_id)], args=[token], client=client)

    def give_back(self, entry: Entry) -> None:
        """Leave ``entry`` pending without counting this delivery: it is delivered
        again after the visibility timeout (its job id is locked by a live owner
        now, so this is no failed attempt)."""
        ctx = self.ctx
        ctx.client.xclaim(
            keys.JOBS,
            ctx.group,
            ctx.name,
            0,
            [entry.id],
            retrycount=max(0, entry.deliveries - 1),
            justid=True,
        )

    def beat(self) -> None:
        """Write the heartbeat and renew the leases and locks this worker still owns."""
        ctx = self.ctx
        now = time.time()
        entries = ctx.entries()
        beat = {
            "worker": ctx.name,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": ctx.started_at,
            "beat_at": now,
            "loop_at": ctx.loop_at,
            "loop_slack_s": ctx.settings.block_ms / 1000 + ctx.settings.reclaim_interval_s,
            "failing_since": ctx.failing_since,
            "last_error": ctx.last_error,
            "jobs": [e.job_id or e.id for e in entries],
            "done": ctx.done,
        }
        ttl_ms = int(3 * ctx.settings.heartbeat_interval_s * 1000)
        pipe = ctx.client.pipeline(transaction=False)
        pipe.set(keys.heartbeat_key(ctx.name), json.dumps(beat), px=ttl_ms)
        unlocked: list[Any] = [e.id for e in entries if e.token is None]
        if unlocked:
            # not yet locked (being parsed or checked): plain renewal
            pipe.xclaim(keys.JOBS, ctx.group, ctx.name, 0, unlocked, justid=True)
        locked = [e for e in entries if e.token is not None and e.job_id is not None]
        if self.cluster:
            pipe.execute()
            self._renew_in_steps(locked)
            return
        for e in locked:
            if e.token is not None and e.job_id is not None:
                self._renew(
                    keys=[keys.JOBS, keys.lock_key(e.job_id)],
                    args=[ctx.group, ctx.name, e.id, e.token, ctx.lock_ms],
                    client=pipe,
                )
        pipe.execute()

    def _renew_in_steps(self, locked: list[Entry]) -> None:
        """Cluster: renew each lock that still holds its token, then claim those entries."""
        ctx = self.ctx
        held: list[Any] = [
            e.id for e in locked
            if int(self._renew_lock(keys=[keys.lock_key(e.job_id or "")],
                                    args=[e.token or "", ctx.lock_ms]))
        ]
        if held:
            ctx.client.xclaim(keys.JOBS, ctx.group, ctx.name, 0, held, justid=True)

    def loop(self) -> None:
        """Beat every ``heartbeat_interval_s`` until :attr:`stop` is set (a thread)."""
        while not self.stop.wait(self.ctx.settings.heartbeat_interval_s):
            try:
                self.beat()
            except redis.RedisError as exc:
                self.ctx.metrics.redis_errors.inc()
                log.warning("heartbeat failed: %s", exc)
