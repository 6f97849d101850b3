"""Stream leases and replica heartbeats in Redis: who runs which live stream.

Contract:

* A lease is the key ``restrav:{stream}:lease`` holding ``"<replica> <fence>"``
  with a TTL. :meth:`LeaseStore.acquire` takes a free lease in one Lua script
  that also INCRs ``restrav:{stream}:fence``: the fencing token, which grows
  with every new owner as long as Redis keeps its data (after a data loss the
  counter starts again at 1, so two owners in turn may hold the same token).
  Every score, ``latest`` and event write carries the writer's name and token,
  and Redis refuses it unless the lease holds exactly that name and token and
  the counter equals the token (:mod:`monitor.live.sinks.fenced`), so a paused or
  partitioned former owner can never write after the new owner took the
  lease, even across a Redis restart without data.
* :meth:`renew` extends leases this replica still holds; a lease that expired
  without anyone taking it (the counter still equals our token) is taken back
  under the same token. Any other outcome is a loss: the caller stops the
  stream at once. :meth:`release` deletes a lease only if it is still ours.
* Replicas register in the set ``restrav:replicas`` and keep a heartbeat key
  ``restrav:replica:<name>`` (JSON: capacity, owned, draining) with a TTL;
  :meth:`replicas` returns the live ones and prunes the dead names.
* With a :class:`~monitor.redis_conn.Durability` (``redis.wait_replicas`` > 0) a
  grant is followed by ``WAIT`` on the same connection; a grant the replicas did not
  acknowledge (a promoted replica could lack it, and its fencing increment) is
  released again and :meth:`acquire` returns None: the lease is not taken. The
  counter keeps the increment, which only skips a token.
* On Redis Cluster (a ``redis+cluster://`` URL) each stream's lease and counter share
  the stream's slot (hash tag), so the scripts are the same, sent one call per stream
  rather than pipelined (redis-py's cluster pipeline does not load scripts); the
  replica set and heartbeats are written without MULTI/EXEC (two slots). With a
  durability there, a grant is sent on a connection to the primary serving the
  stream's slot, followed by ``WAIT`` on that connection
  (:func:`~monitor.redis_conn.anode_pipelines`); a grant the replicas did not
  acknowledge is released and not taken, as above, and a grant whose node failed or
  answered ``MOVED`` raises the error (the coordinator tries again on its next tick,
  after the client read the slot map again).
* Every method raises redis errors to the caller (the coordinator counts them
  and tries again on its next tick); nothing here sleeps or loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from .. import keys
from ..redis_conn import Durability, anode_pipelines, arediscover, is_cluster
from ..redis_faults import NotReplicated

log = logging.getLogger("restrav.cluster")

_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur then return {0, cur} end
local t = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. t, 'PX', ARGV[2])
return {t, ''}
"""

_RENEW = """
local cur = redis.call('GET', KEYS[1])
local mine = ARGV[1] .. ' ' .. ARGV[2]
if cur == mine then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
if (not cur) and redis.call('GET', KEYS[2]) == ARGV[2] then
  redis.call('SET', KEYS[1], mine, 'PX', ARGV[3])
  return 2
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


@dataclass(frozen=True)
class Lease:
    """A lease as read from Redis: its holder and fencing token."""

    owner: str
    fence: int


@dataclass(frozen=True)
class ReplicaInfo:
    """One replica's heartbeat: capacity (streams it may run), owned, draining."""

    name: str
    capacity: int
    owned: int = 0
    draining: bool = False


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def parse_lease(raw: Any) -> Lease | None:
    """``"<replica> <fence>"`` -> Lease (None for a missing or malformed value)."""
    if raw is None:
        return None
    owner, _, fence = _text(raw).rpartition(" ")
    try:
        return Lease(owner, int(fence)) if owner else None
    except ValueError:
        return None


class LeaseStore:
    """Leases and heartbeats of one replica (see the module docstring)."""

    def __init__(self, client: Any, replica: str, lease_ttl_s: float,
                 durability: Durability | None = None) -> None:
        if not replica or " " in replica:
            raise ValueError(f"replica name {replica!r} must be non-empty without spaces")
        self.client = client
        self.replica = replica
        self.ttl_ms = max(1, int(lease_ttl_s * 1000))
        self.durability = durability or Durability()
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self.cluster = is_cluster(client)

    async def _mget(self, names: list[str]) -> list[Any]:
        """MGET; on a cluster one GET per slot (redis-py's ``mget_nonatomic``)."""
        if self.cluster:
            return list(await self.client.mget_nonatomic(names))
        return list(await self.client.mget(names))

    async def acquire(self, stream_id: str) -> int | None:
        """Take the free lease of ``stream_id``: the new fencing token, or None if held
        (or, with durability, if the replicas did not acknowledge the grant in time)."""
        lease, fence = keys.stream_lease(stream_id), keys.stream_fence(stream_id)
        if self.cluster and self.durability.enabled:
            return await self._acquire_on_node(stream_id)
        if self.cluster:  # one script, no pipeline (redis-py's cluster pipeline loads none)
            granted = await self._acquire(keys=[lease, fence], args=[self.replica, self.ttl_ms])
            return int(granted[0]) if int(granted[0]) > 0 else None
        async with self.client.pipeline(transaction=False) as pipe:
            await self._acquire(keys=[lease, fence], args=[self.replica, self.ttl_ms],
                                client=pipe)
            waits = self.durability.queue_wait(pipe)
            res = await pipe.execute()
        return await self._granted(stream_id, int(res[0][0]),
                                   waits and int(res[1]) >= self.durability.replicas)

    async def _acquire_on_node(self, stream_id: str) -> int | None:
        """Cluster with durability: the grant script and WAIT on one connection to the
        primary serving the stream's slot (module docstring)."""
        lease, fence = keys.stream_lease(stream_id), keys.stream_fence(stream_id)
        ((reply, fault),) = await anode_pipelines(
            self.client,
            [(lease, lambda pipe: pipe.execute_command(
                "EVAL", _ACQUIRE, 2, lease, fence, self.replica, self.ttl_ms))],
            self.durability, f"lease grant of {stream_id}",
        )
        if isinstance(reply, Exception):  # the node failed, or no longer serves the slot
            raise reply
        if fault is not None and not isinstance(fault, NotReplicated):
            raise fault  # a refused WAIT
        return await self._granted(stream_id, int(reply[0]), fault is None)

    async def _granted(self, stream_id: str, token: int, acknowledged: bool) -> int | None:
        """The outcome of a grant script: ``token`` (0: the lease is held), kept only when
        the replicas ``acknowledged`` it (always, without durability); one they did not is
        released again (best effort) and None returned."""
        if token <= 0:
            return None
        if self.durability.enabled and not acknowledged:
            log.warning(
                "stream %s: lease grant (fence %d) not acknowledged by %d replica(s) within "
                "%d ms; not taken", stream_id, token, self.durability.replicas,
                self.durability.timeout_ms,
            )
            with contextlib.suppress(RedisError, OSError):  # best effort: it expires anyway
                await self.release(stream_id, token)
            await arediscover(self.client)  # maybe a deposed primary: ask the sentinels again
            return None
        return token

    async def renew(self, owned: dict[str, int]) -> dict[str, bool]:
        """Renew every lease in ``owned`` (id -> token), pipelined: id -> still ours."""
        if not owned:
            return {}
        ids = sorted(owned)
        if self.cluster:  # each stream's keys in its own slot: one script call each
            done = await asyncio.gather(*(self._renew(
                keys=[keys.stream_lease(sid), keys.stream_fence(sid)],
                args=[self.replica, owned[sid], self.ttl_ms],
            ) for sid in ids))
            return {sid: int(r) > 0 for sid, r in zip(ids, done)}
        async with self.client.pipeline(transaction=False) as pipe:
            for sid in ids:
                await self._renew(
                    keys=[keys.stream_lease(sid), keys.stream_fence(sid)],
                    args=[self.replica, owned[sid], self.ttl_ms],
                    client=pipe,
                )
            res = await pipe.execute()
        return {sid: int(r) > 0 for sid, r in zip(ids, res)}

    async def release(self, stream_id: str, token: int) -> bool:
        """Delete the lease if it is still ours (token and replica); True if it was."""
        res = await self._release(
            keys=[keys.stream_lease(stream_id)], args=[keys.lease_value(self.replica, token)]
        )
        return int(res) == 1

    async def owners(self, stream_ids: list[str]) -> dict[str, Lease | None]:
        """The current lease of each stream (None: free)."""
        if not stream_ids:
            return {}
        raw = await self._mget([keys.stream_lease(s) for s in stream_ids])
        return {s: parse_lease(v) for s, v in zip(stream_ids, raw)}

    async def heartbeat(self, info: ReplicaInfo) -> None:
        """Register this replica and refresh its heartbeat (TTL: the lease TTL)."""
        body = json.dumps({"capacity": info.capacity, "owned": info.owned,
                           "draining": info.draining, "at": round(time.time(), 3)})
        # one transaction, except on a cluster (two slots): a name without a heartbeat
        # is pruned by replicas(), a heartbeat without its name is not seen till the next
        async with self.client.pipeline(transaction=not self.cluster) as pipe:
            pipe.sadd(keys.REPLICAS, self.replica)
            pipe.set(keys.replica_key(self.replica), body, px=self.ttl_ms)
            await pipe.execute()

    async def unregister(self) -> None:
        """Forget this replica's heartbeat (it is leaving)."""
        # one transaction, except on a cluster (two slots): a name without a heartbeat
        # is pruned by replicas(), a heartbeat without its name is not seen till the next
        async with self.client.pipeline(transaction=not self.cluster) as pipe:
            pipe.srem(keys.REPLICAS, self.replica)
            pipe.delete(keys.replica_key(self.replica))
            await pipe.execute()

    async def replicas(self) -> list[ReplicaInfo]:
        """Every replica with a live heartbeat, by name; dead names are pruned."""
        names = sorted(_text(n) for n in await self.client.smembers(keys.REPLICAS))
        if not names:
            return []
        raw = await self._mget([keys.replica_key(n) for n in names])
        out: list[ReplicaInfo] = []
        dead: list[str] = []
        for name, v in zip(names, raw):
            if v is None:
                dead.append(name)
                continue
            try:
                d = json.loads(v)
                out.append(ReplicaInfo(name, int(d["capacity"]), int(d.get("owned", 0)),
                                       bool(d.get("draining", False))))
            except (ValueError, KeyError, TypeError):
                dead.append(name)
        if dead:
            await self.client.srem(keys.REPLICAS, *dead)
        return out

    async def last_seq(self, stream_id: str) -> int | None:
        """The ``seq`` of the stream's newest stored score (None: none yet)."""
        v = await self.client.hget(keys.stream_latest(stream_id), "seq")
        try:
            return int(_text(v)) if v is not None else None
        except ValueError:
            return None
