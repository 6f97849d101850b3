"""Fenced writes: a score (stream entry + ``latest``) or an event that Redis refuses
when the writer's fencing token is stale.

With leases (:mod:`monitor.cluster.leases`) every score and alert event carries the
fencing token of its replica's lease. Each write is one Lua script, atomic in
Redis: it writes only when the stream's lease ``restrav:{stream}:lease`` holds
exactly this writer's lease (``"<replica> <token>"``) and the stream's counter
``restrav:{stream}:fence`` equals the token; else it writes nothing and
returns 0. A new owner INCRs the counter and sets the lease to its own name
when it takes it, so every write of the former owner that reaches Redis after
that moment is refused, however long that owner was paused or partitioned.
The lease check matters when Redis lost its data: the counter then starts
again at 1 and a new owner may get the very token a former owner still holds;
the lease names the new owner, so the former one is still refused. A write
while the lease is absent (expired, released, or lost with Redis' data) is
refused as well. A refusal is not an outage: the caller counts it and drops
the item (it belongs to an ownership that ended).

A score is written once per owner: the score script returns 2 and writes nothing
when ``latest`` already holds a score of the same owner and token with this ``seq``
or a later one: a batch written again because its replica acknowledgement did not
come (:mod:`monitor.live.sinks.redis`). Under one token an owner's ``seq`` only
grows, so nothing else is skipped. Returns: 1 written, 0 refused, 2 already there.

Written entries get two more fields, ``owner`` (the replica) and ``fence``.

On Redis Cluster a script may touch one slot: a fenced event is appended to the
stream's own ``restrav:{stream}:events`` (its slot, checked with the lease) instead of
``restrav:events``, and the sink copies each event written there to ``restrav:events``
afterwards (:mod:`monitor.live.sinks.redis`); the scripts are sent whole (``EVAL``),
as redis-py's cluster pipeline does not load scripts.
"""

from __future__ import annotations

from typing import Any

from ... import keys
from ...redis_conn import is_cluster

# KEYS: lease, fence, target(s); ARGV: token, "<owner> <token>", maxlen, fields...
_CHECK = """
if redis.call('GET', KEYS[1]) ~= ARGV[2] or redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
local f = {}
for i = 4, #ARGV do f[#f + 1] = ARGV[i] end
"""

_SCORE = _CHECK + """
local seq
for i = 4, #ARGV - 1, 2 do if ARGV[i] == 'seq' then seq = tonumber(ARGV[i + 1]) end end
local last = redis.call('HMGET', KEYS[4], 'seq', 'owner', 'fence')
if seq and last[1] and last[2] and last[3] and last[2] .. ' ' .. last[3] == ARGV[2]
    and tonumber(last[1]) >= seq then
  return 2
end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', unpack(f))
redis.call('HSET', KEYS[4], unpack(f))
return 1
"""

_EVENT = _CHECK + """
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', unpack(f))
return 1
"""


def _flat(fields: dict[str, str]) -> list[str]:
    out: list[str] = []
    for k, v in fields.items():
        out += [k, v]
    return out


class FencedWriter:
    """Queues fenced score and event scripts on a pipeline (see the module docstring)."""

    def __init__(self, client: Any, owner: str) -> None:
        self.owner = owner
        self.cluster = is_cluster(client)
        self._score = client.register_script(_SCORE)
        self._event = client.register_script(_EVENT)

    async def score(
        self, pipe: Any, stream_id: str, fence: int, fields: dict[str, str], maxlen: int
    ) -> None:
        """Queue the fenced XADD of ``restrav:{stream}:scores`` + HSET of ``latest``."""
        names = [keys.stream_lease(stream_id), keys.stream_fence(stream_id),
                 keys.stream_scores(stream_id), keys.stream_latest(stream_id)]
        args = self._args(fence, maxlen, fields)
        if self.cluster:
            pipe.eval(_SCORE, len(names), *names, *args)
            return
        await self._score(keys=names, args=args, client=pipe)

    async def event(
        self, pipe: Any, stream_id: str, fence: int, fields: dict[str, str], maxlen: int
    ) -> None:
        """Queue the fenced XADD of an alert event to ``restrav:events`` (on a cluster to
        ``restrav:{stream}:events``: the caller copies it on, see the module docstring)."""
        args = self._args(fence, maxlen, fields)
        if self.cluster:
            names = [keys.stream_lease(stream_id), keys.stream_fence(stream_id),
                     keys.stream_events(stream_id)]
            pipe.eval(_EVENT, len(names), *names, *args)
            return
        await self._event(
            keys=[keys.stream_lease(stream_id), keys.stream_fence(stream_id), keys.EVENTS],
            args=args,
            client=pipe,
        )

    def stored(self, fence: int, fields: dict[str, str]) -> dict[str, str]:
        """The fields a fenced write stores: ``fields`` with ``owner`` and ``fence``."""
        return {**fields, "owner": self.owner, "fence": str(fence)}

    def _args(self, fence: int, maxlen: int, fields: dict[str, str]) -> list[str]:
        f = self.stored(fence, fields)
        return [str(fence), keys.lease_value(self.owner, fence), str(maxlen), *_flat(f)]
