"""Fenced writes: a score (stream entry + ``latest``) or an event that Redis refuses
when the writer's fencing token is stale.

With leases (:mod:`monitor.leases`) every score and alert event carries the
fencing token of its replica's lease. Each write is one Lua script, atomic in
Redis: it compares the token with the stream's counter ``restrav:{stream}:fence``
and writes only when they are equal; else it writes nothing and returns 0. A
new owner INCRs the counter when it takes the lease, so every write of the
former owner that reaches Redis after that moment is refused, however long
that owner was paused or partitioned. A refusal is not an outage: the caller
counts it and drops the item (it belongs to an ownership that ended).

Written entries get two more fields, ``owner`` (the replica) and ``fence``.
"""

from __future__ import annotations

from typing import Any

from .. import keys

_SCORE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local f = {}
for i = 3, #ARGV do f[#f + 1] = ARGV[i] end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(f))
redis.call('HSET', KEYS[3], unpack(f))
return 1
"""

_EVENT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local f = {}
for i = 3, #ARGV do f[#f + 1] = ARGV[i] end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(f))
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
        self._score = client.register_script(_SCORE)
        self._event = client.register_script(_EVENT)

    async def score(
        self, pipe: Any, stream_id: str, fence: int, fields: dict[str, str], maxlen: int
    ) -> None:
        """Queue the fenced XADD of ``restrav:{stream}:scores`` + HSET of ``latest``."""
        f = {**fields, "owner": self.owner, "fence": str(fence)}
        await self._score(
            keys=[keys.stream_fence(stream_id), keys.stream_scores(stream_id),
                  keys.stream_latest(stream_id)],
            args=[str(fence), str(maxlen), *_flat(f)],
            client=pipe,
        )

    async def event(
        self, pipe: Any, stream_id: str, fence: int, fields: dict[str, str], maxlen: int
    ) -> None:
        """Queue the fenced XADD of an alert event to ``restrav:events``."""
        f = {**fields, "owner": self.owner, "fence": str(fence)}
        await self._event(
            keys=[keys.stream_fence(stream_id), keys.EVENTS],
            args=[str(fence), str(maxlen), *_flat(f)],
            client=pipe,
        )
