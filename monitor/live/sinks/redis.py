"""The Redis sink: per stream a capped score stream and a ``latest`` hash, plus alert events.

For each score, in one MULTI/EXEC with the other items of its batch:
``XADD restrav:{stream}:scores MAXLEN ~ N * <fields>`` and
``HSET restrav:{stream}:latest <fields>``, so ``latest`` always matches the
newest entry of the score stream. Alert events go to ``restrav:events``
(``XADD MAXLEN ~``). Field values are strings; ``p_ai`` is empty without a
classifier; ``features`` is a JSON list of the 21 features.

A connection or timeout error, or a refused write (``OOM`` at ``maxmemory``, a
``READONLY`` replica, ``NOREPLICAS``, ``MISCONF``, ``BUSY``, ... also when Redis
refuses a command of the MULTI/EXEC or the EXEC itself; see
:mod:`monitor.redis_faults`) raises :class:`SinkUnavailable`: the batch stays
buffered (bounded), the sink reports itself unavailable (serve's /readyz turns
503), and the batch is written when Redis takes writes again. Any other error
(``WRONGTYPE``, a bug) propagates; :class:`~monitor.live.sinks.base.BufferedSink`
keeps and retries that batch too, and logs it as a failure, not an outage.

Items that carry a fencing token (replicas with leases) are written by the
fenced scripts of :mod:`monitor.live.sinks.fenced` instead: Redis refuses them when
the token is stale; each refusal is counted in
``restrav_stale_writes_refused_total{stream}`` and reported to ``on_refused``.

With a :class:`~monitor.redis_conn.Durability` (``redis.wait_replicas`` > 0 and
``redis.wait_scores``) the MULTI/EXEC is followed by ``WAIT`` on the same connection
(one round trip): a batch fewer replicas acknowledged raises :class:`SinkUnavailable`
(``NOTREPLICATED``), stays buffered and is written again, after the client asked the
sentinels for the primary again (a deposed primary takes writes until demoted). A
failover then loses no score the sink counted as written. Written again, a fenced
score already stored is not repeated (:mod:`monitor.live.sinks.fenced`); scores
without a fencing token (serve without leases) and alert events may then appear
twice.

On Redis Cluster (a ``redis+cluster://`` URL) a batch is a plain pipeline (redis-py
sends each node its commands; a stream's score and ``latest`` share its slot, so
they go together to one node, but a batch is no longer one MULTI/EXEC), and a
fenced event is stored in the stream's own ``restrav:{stream}:events``, then copied
to ``restrav:events`` (:mod:`monitor.live.sinks.fenced`): a sink that dies between
the two leaves the event in the stream's own log only.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ... import keys
from ...metrics import StreamMetrics
from ...redis_conn import Durability, arediscover, async_redis_client
from ...redis_faults import NotReplicated, redis_unavailable, refusal_code
from ...types import StreamScore
from ..alerts import Event
from .base import BufferedSink, Item, SinkUnavailable
from .fenced import FencedWriter


def score_fields(score: StreamScore) -> dict[str, str]:
    """The flat string fields stored for one score (stream entry and latest hash)."""
    j = score.to_json(features=True)
    out: dict[str, str] = {}
    for k, v in j.items():
        if k == "features":
            out[k] = json.dumps(v)
        elif v is None:
            out[k] = ""
        elif isinstance(v, bool):
            out[k] = "1" if v else "0"
        else:
            out[k] = str(v)
    return out


def event_fields(event: Event) -> dict[str, str]:
    """The flat string fields stored for one event (an alert's, or who changed what)."""
    return {k: ("" if v is None else str(v)) for k, v in event.to_json().items()}


class RedisSink(BufferedSink):
    """Scores and events into Redis (see the module docstring)."""

    name = "redis"

    def __init__(
        self,
        client: aioredis.Redis,
        scores_maxlen: int = 10_000,
        events_maxlen: int = 100_000,
        owner: str = "",
        on_refused: Callable[[str, int], None] | None = None,
        durability: Durability | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.durability = durability or Durability()
        self.client = client
        self.scores_maxlen = scores_maxlen
        self.events_maxlen = events_maxlen
        self.fenced = FencedWriter(client, owner)
        self.on_refused = on_refused
        self.refused = 0

    @classmethod
    def from_url(
        cls, url: str, connect_timeout_s: float = 2.0, metrics: StreamMetrics | None = None,
        **kw: Any,
    ) -> RedisSink:
        """A sink with its own client for ``url`` (one server or Sentinel: see
        :mod:`monitor.redis_conn`); reads time out after ``connect_timeout_s`` plus the
        ``durability`` wait, if any."""
        wait = kw.get("durability") or Durability()
        client = async_redis_client(
            url, socket_connect_timeout=connect_timeout_s,
            socket_timeout=connect_timeout_s + (wait.timeout_ms / 1000 if wait.enabled else 0),
        )
        return cls(client, metrics=metrics, **kw)

    async def write(self, items: list[Item]) -> None:
        """One MULTI/EXEC for the batch (then WAIT, with durability); fenced items are
        checked inside it."""
        fenced: dict[int, tuple[str, int]] = {}  # command index -> (stream, token)
        copies: dict[int, Any] = {}  # cluster: command index -> event fields to copy
        waits = self.durability.enabled
        cluster = self.fenced.cluster
        try:
            async with self.client.pipeline(transaction=not (waits or cluster)) as pipe:
                if waits:  # MULTI/EXEC by hand: WAIT must follow on the same connection
                    pipe.execute_command("MULTI")
                for it in items:
                    if cluster and it.fence is not None and not isinstance(it, StreamScore):
                        copies[len(pipe)] = self.fenced.stored(it.fence, event_fields(it))
                    await self._queue(pipe, it, fenced)
                if waits:
                    pipe.execute_command("EXEC")
                    self.durability.queue_wait(pipe)
                reply = await pipe.execute()
            results = self._acknowledged(reply) if waits else reply
            written = [ev for idx, ev in copies.items() if int(results[idx]) == 1]
            if written:  # the events the fence let through, on to the shared log
                async with self.client.pipeline(transaction=False) as pipe:
                    for ev in written:
                        pipe.xadd(keys.EVENTS, ev, maxlen=self.events_maxlen, approximate=True)
                    await pipe.execute()
        except NotReplicated as exc:
            await arediscover(self.client)  # maybe a deposed primary: ask the sentinels
            raise SinkUnavailable("redis: NOTREPLICATED") from exc
        except (RedisError, OSError) as exc:
            if not redis_unavailable(exc):
                raise
            why = refusal_code(exc) or type(exc).__name__
            raise SinkUnavailable(f"redis: {why}") from exc
        offset = 1 if waits else 0  # the MULTI's own reply came first
        for idx, (stream_id, token) in fenced.items():
            if int(results[idx - offset]) == 0:
                self._refused(stream_id, token)

    async def _queue(self, pipe: Any, it: Item, fenced: dict[int, tuple[str, int]]) -> None:
        """Queue one item's writes on ``pipe``; fenced ones noted in ``fenced``."""
        if it.fence is not None:
            fenced[len(pipe)] = (it.stream_id, it.fence)
            if isinstance(it, StreamScore):
                await self.fenced.score(
                    pipe, it.stream_id, it.fence, score_fields(it), self.scores_maxlen
                )
            else:
                await self.fenced.event(
                    pipe, it.stream_id, it.fence, event_fields(it), self.events_maxlen
                )
        elif isinstance(it, StreamScore):
            fields: Any = score_fields(it)
            pipe.xadd(keys.stream_scores(it.stream_id), fields,
                      maxlen=self.scores_maxlen, approximate=True)
            pipe.hset(keys.stream_latest(it.stream_id), mapping=fields)
        else:  # an alert's event, or who changed a stream
            ev: Any = event_fields(it)
            pipe.xadd(keys.EVENTS, ev, maxlen=self.events_maxlen, approximate=True)

    def _acknowledged(self, reply: list[Any]) -> list[Any]:
        """The EXEC results of a MULTI/EXEC + WAIT reply; raises what a transaction
        pipeline would (a command's error) and :class:`NotReplicated` when short."""
        results = reply[-2]
        if results is None:
            raise RedisError("EXEC aborted")
        for r in results:
            if isinstance(r, Exception):
                raise r
        self.durability.check(reply[-1], "score batch")
        return list(results)

    def _refused(self, stream_id: str, token: int) -> None:
        self.refused += 1
        if self.metrics is not None:
            self.metrics.stale_writes_refused.labels(stream_id).inc()
        if self.on_refused is not None:
            self.on_refused(stream_id, token)

    async def aclose(self) -> None:
        """Flush what can be flushed, then close the client."""
        await super().aclose()
        await self.client.aclose()
