"""The sink's Lua scripts: a stream's scores (entries + ``latest``) in one call, plain
or fenced, and a fenced event; each sent by ``EVALSHA`` inside a pipeline.

Every script touches the keys of one stream only (its ``{stream}`` hash tag: one
Redis Cluster slot), except the fenced event, which appends to ``restrav:events``.
A call carries all the scores of one stream in a batch: the field names once (a JSON
list), then one argument per score, the JSON list of its values (strings; one argument
per score, not two per field, because a client encodes each argument on its own: that
was most of the sink's CPU); each score is one ``XADD`` of the score stream,
and ``latest`` is set once, to the fields of the last score written (so ``latest``
always matches the newest entry). The call is atomic; calls of different streams
are not one transaction.

**Fencing.** With leases (:mod:`monitor.cluster.leases`) every score and alert event
carries the fencing token of its replica's lease. A fenced call writes only when the
stream's lease ``restrav:{stream}:lease`` holds exactly this writer's lease
(``"<replica> <token>"``) and the stream's counter ``restrav:{stream}:fence`` equals
the token; else it writes nothing and returns 0. A new owner INCRs the counter and
sets the lease to its own name when it takes it, so every write of the former owner
that reaches Redis after that moment is refused, however long that owner was paused
or partitioned. The lease check matters when Redis lost its data: the counter then
starts again at 1 and a new owner may get the very token a former owner still holds;
the lease names the new owner, so the former one is still refused. A write while the
lease is absent is not written either: with the counter still at the writer's token
(the lease expired and nobody took it: a renewal that came late, or that a failover
lost) the script answers :data:`LAPSED` (3), and the caller keeps the items, for the
owner's next renewal takes the lease back under the same token
(:mod:`monitor.cluster.leases`); dropping them would leave a gap in ``seq`` that the
owner's later writes close over. Otherwise (released and taken, or lost with Redis'
data) it is refused. A refusal is not an outage: the caller counts it and drops the
items (they belong to an ownership that ended).

A fenced score is written once per owner: a score whose ``seq`` is at or below the
``seq`` that ``latest`` holds for the same owner and token is skipped (a batch written
again because its replica acknowledgement did not come, :mod:`monitor.live.sinks.redis`).
Under one token an owner's ``seq`` only grows, so nothing else is skipped. Returns: 1
some written, 0 refused, 2 every score already there, 3 lapsed. Written entries get two more
fields, ``owner`` (the replica) and ``fence``.

Scripts are sent by hash (:class:`Lua`); a server that does not know one (restarted,
failed over) answers ``NOSCRIPT`` and the caller loads it (:meth:`Lua.load`) and sends
those calls again.

On Redis Cluster a script may touch one slot: a fenced event is appended to the
stream's own ``restrav:{stream}:events`` (its slot, checked with the lease) instead of
``restrav:events``, and the sink copies each event written there to ``restrav:events``
afterwards (:mod:`monitor.live.sinks.redis`). There the scripts are sent whole
(``EVAL``): a ``SCRIPT LOAD`` would reach one node, and a failover promotes a replica
that never loaded it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from pydantic_core import to_json

from ... import keys

# KEYS: scores, latest; ARGV: maxlen, JSON list of the field names, then per score a
# JSON list of its values (strings): one argument per score, not two per field
PLAIN_SCORES = """
local names = cjson.decode(ARGV[2])
local k = #names
local f = {}
for i = 1, k do f[2 * i - 1] = names[i] end
for s = 3, #ARGV do
  local v = cjson.decode(ARGV[s])
  for i = 1, k do f[2 * i] = v[i] end
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(f))
end
redis.call('HSET', KEYS[2], unpack(f))
return 1
"""

# One server (not a cluster): the scores of every stream of a batch in one call. KEYS:
# per stream its scores and latest; ARGV: maxlen, JSON list of the field names, JSON list
# of each stream's number of scores, then per score a JSON list of its values. A stream
# whose command fails (WRONGTYPE, ...) gets its error text in the reply and its other
# commands are not run; the other streams are written: one reply per stream, 1 or an
# error text (redis.pcall: a Lua error would leave earlier streams written and report
# none of them).
PLAIN_BATCH = """
local names = cjson.decode(ARGV[2])
local counts = cjson.decode(ARGV[3])
local k = #names
local f = {}
for i = 1, k do f[2 * i - 1] = names[i] end
local out = {}
local a = 4
for s = 1, #counts do
  local failed = nil
  for r = 1, counts[s] do
    if not failed then
      local v = cjson.decode(ARGV[a])
      for i = 1, k do f[2 * i] = v[i] end
      local res = redis.pcall('XADD', KEYS[2 * s - 1], 'MAXLEN', '~', ARGV[1], '*', unpack(f))
      if type(res) == 'table' and res.err then failed = res.err end
    end
    a = a + 1
  end
  if not failed then
    local res = redis.pcall('HSET', KEYS[2 * s], unpack(f))
    if type(res) == 'table' and res.err then failed = res.err end
  end
  out[s] = failed or 1
end
return out
"""

LAPSED = 3
"""A fenced script's answer when the writer's lease expired and nobody took it (the
lease is absent, the counter still equals the writer's token): nothing written."""

_CHECK = """
local lease, fence = redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2])
if lease ~= ARGV[2] or fence ~= ARGV[1] then
  if (not lease) and fence == ARGV[1] then return 3 end
  return 0
end
"""

# KEYS: lease, fence, scores, latest; ARGV: token, "<owner> <token>", maxlen, JSON list
# of the field names (one is 'seq'), then per score a JSON list of its values
FENCED_SCORES = _CHECK + """
local names = cjson.decode(ARGV[4])
local k = #names
local f, seqi = {}, nil
for i = 1, k do
  f[2 * i - 1] = names[i]
  if names[i] == 'seq' then seqi = i end
end
local last = redis.call('HMGET', KEYS[4], 'seq', 'owner', 'fence')
local done = nil
if last[1] and last[2] and last[3] and last[2] .. ' ' .. last[3] == ARGV[2] then
  done = tonumber(last[1])
end
local wrote = nil
for s = 5, #ARGV do
  local v = cjson.decode(ARGV[s])
  local seq = seqi and tonumber(v[seqi])
  if not (seq and done and done >= seq) then
    for i = 1, k do f[2 * i] = v[i] end
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', unpack(f))
    if seq then done = seq end
    wrote = true
  end
end
if not wrote then return 2 end
redis.call('HSET', KEYS[4], unpack(f))
return 1
"""

# KEYS: lease, fence, events; ARGV: token, "<owner> <token>", maxlen, fields...
FENCED_EVENT = _CHECK + """
local f = {}
for i = 4, #ARGV do f[#f + 1] = ARGV[i] end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', unpack(f))
return 1
"""


class Lua:
    """One script sent by ``EVALSHA`` (no round trip to check that the server has it:
    a ``NOSCRIPT`` reply means :meth:`load`, then send again), or with ``whole`` by
    ``EVAL`` with its text (Redis Cluster: no node can lack it)."""

    def __init__(self, text: str, whole: bool = False) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()
        self.whole = whole

    def queue(self, pipe: Any, keys_: Sequence[str], args: Sequence[str | bytes]) -> None:
        """Queue ``EVALSHA`` (``EVAL`` when ``whole``) on ``pipe`` (a pipeline or a client)."""
        if self.whole:
            pipe.execute_command("EVAL", self.text, len(keys_), *keys_, *args)
            return
        pipe.execute_command("EVALSHA", self.sha, len(keys_), *keys_, *args)

    async def load(self, client: Any) -> None:
        """``SCRIPT LOAD`` it on ``client``'s server."""
        await client.script_load(self.text)


class FencedWriter:
    """Queues fenced score and event calls on a pipeline (see the module docstring)."""

    def __init__(self, owner: str, cluster: bool = False) -> None:
        self.owner = owner
        self.cluster = cluster
        self.scores_lua = Lua(FENCED_SCORES, whole=cluster)
        self.event_lua = Lua(FENCED_EVENT, whole=cluster)

    async def load(self, client: Any) -> None:
        """Load both scripts on ``client``'s server."""
        await self.scores_lua.load(client)
        await self.event_lua.load(client)

    def scores(
        self, pipe: Any, stream_id: str, fence: int, names: Sequence[str],
        rows: Sequence[str], maxlen: int,
    ) -> None:
        """Queue the fenced XADDs of ``restrav:{stream}:scores`` + HSET of ``latest`` for
        ``rows`` (one per score, in ``seq`` order: each the JSON list of its string
        values in the order of ``names``, :func:`~.fields.score_json_rows`)."""
        mark = "," + to_json([self.owner, str(fence)]).decode()[1:]
        self.scores_lua.queue(
            pipe,
            (keys.stream_lease(stream_id), keys.stream_fence(stream_id),
             keys.stream_scores(stream_id), keys.stream_latest(stream_id)),
            [str(fence), keys.lease_value(self.owner, fence), str(maxlen),
             json.dumps([*names, "owner", "fence"]),
             *(row[:-1] + mark for row in rows)],
        )

    def event(
        self, pipe: Any, stream_id: str, fence: int, fields: dict[str, str], maxlen: int
    ) -> None:
        """Queue the fenced XADD of an alert event to ``restrav:events`` (on a cluster to
        ``restrav:{stream}:events``: the caller copies it on, see the module docstring)."""
        args = [str(fence), keys.lease_value(self.owner, fence), str(maxlen)]
        for k, v in self.stored(fence, fields).items():
            args += (k, v)
        log = keys.stream_events(stream_id) if self.cluster else keys.EVENTS
        self.event_lua.queue(
            pipe, (keys.stream_lease(stream_id), keys.stream_fence(stream_id), log), args
        )

    def stored(self, fence: int, fields: dict[str, str]) -> dict[str, str]:
        """The fields a fenced write stores: ``fields`` with ``owner`` and ``fence``."""
        return {**fields, "owner": self.owner, "fence": str(fence)}
