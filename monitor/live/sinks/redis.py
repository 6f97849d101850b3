"""The Redis sink: per stream a capped score stream and a ``latest`` hash, plus alert events.

A batch is one pipeline (one round trip, not a transaction). For each stream a script
(:mod:`monitor.live.sinks.fenced`) appends each of the stream's scores of the batch,
``XADD restrav:{stream}:scores MAXLEN ~ N * <fields>``, and sets
``HSET restrav:{stream}:latest <fields>`` to the last one, atomically: ``latest``
always matches the newest entry. On Redis Cluster, and for fenced scores, that is one
script call per stream, touching that stream's keys only (one hash-tag slot), so no
command spans the slots of several streams; on one server the unfenced scores of all
the batch's streams go in one script call (``PLAIN_BATCH``: the per-call cost of
redis-py, packing and reading one reply, was most of the sink's CPU at hundreds of
streams), which reports each stream's outcome as its own call would. Alert events go to
``restrav:events`` (``XADD MAXLEN ~``). Field values are strings (:mod:`.fields`);
``p_ai`` is empty without a classifier; ``features`` is a JSON list of the 21 features.

A connection or timeout error, or a refused write (``OOM`` at ``maxmemory``, a
``READONLY`` replica, ``NOREPLICAS``, ``MISCONF``, ``BUSY``, ...; see
:mod:`monitor.redis_faults`) raises :class:`SinkUnavailable`: the batch stays
buffered (bounded), the sink reports itself unavailable (serve's /readyz turns
503), and the batch is written when Redis takes writes again. Any other error
(``WRONGTYPE``, a bug) propagates; :class:`~monitor.live.sinks.base.BufferedSink`
keeps and retries that batch too, and logs it as a failure, not an outage. When only
some calls of a batch fail (a refusal or an error reply to one stream's call), the
others are written and only the failed calls' items are kept
(:class:`~monitor.live.sinks.base.PartlyWritten`), so a retry repeats no score that
was written. A server that lacks the scripts (restarted, failed over) answers
``NOSCRIPT``: they are loaded and those calls sent again at once.

Items that carry a fencing token (replicas with leases) are written by the
fenced scripts of :mod:`monitor.live.sinks.fenced` instead: Redis refuses them when
the token is stale; each refused item is counted in
``restrav_stale_writes_refused_total{stream}`` and reported to ``on_refused``. Items
whose lease lapsed (expired, nobody took it) are kept like an outage's
(:class:`PartlyWritten`, :class:`SinkUnavailable`: the owner's renewal takes the lease
back and they are written, in order); they count as refused after ``lapse_grace_s``
of lapse (the lease TTL: no renewal came), or at once for a lease the replica let go
(:meth:`RedisSink.released`).

With a :class:`~monitor.redis_conn.Durability` (``redis.wait_replicas`` > 0 and
``redis.wait_scores``) the pipeline ends with ``WAIT`` on the same connection
(still one round trip): a batch fewer replicas acknowledged raises
:class:`SinkUnavailable` (``NOTREPLICATED``), stays buffered and is written again,
after the client asked the sentinels for the primary again (a deposed primary takes
writes until demoted). A failover then loses no score the sink counted as written.
Written again, a fenced score already stored is not repeated
(:mod:`monitor.live.sinks.fenced`); scores without a fencing token (serve without
leases) and alert events may then appear twice, as after a lost connection whose
pipeline had reached Redis.

On Redis Cluster (a ``redis+cluster://`` URL) redis-py sends each node its calls of
the batch (a stream's call touches its one slot), the scripts are sent whole
(``EVAL``), and a fenced event is stored in the stream's own
``restrav:{stream}:events``, then copied to ``restrav:events``
(:mod:`monitor.live.sinks.fenced`): a sink that dies between the two leaves the event
in the stream's own log only. With a :class:`~monitor.redis_conn.Durability` there,
``WAIT`` must run on the connection that carried each node's writes: the calls are
grouped by the primary serving each call's slot and each node gets one pipeline of its
calls and ``WAIT`` on one connection (:func:`~monitor.redis_conn.anode_pipelines`).
The calls of a node that failed, answered ``MOVED`` (no longer serves the slot) or whose
replicas did not acknowledge in time count as not written (:class:`PartlyWritten`: the
other nodes' calls are done) and are written again once the client has read the slot
map again; the event copies to ``restrav:events`` wait too, and a copy not acknowledged
is logged (not written again).
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from ... import keys
from ...metrics import StreamMetrics
from ...redis_conn import (
    Durability,
    anode_pipelines,
    arediscover,
    async_redis_client,
    is_cluster,
)
from ...redis_faults import NotReplicated, redis_unavailable, refusal_code
from ...types import StreamScore
from .base import BufferedSink, Item, PartlyWritten, SinkUnavailable
from .fenced import LAPSED, PLAIN_BATCH, PLAIN_SCORES, FencedWriter, Lua
from .fields import NAMES_JSON, SCORE_FIELDS, event_fields, score_json_rows

log = logging.getLogger(__name__)

def _score_values(calls: list[_Call]) -> dict[int, list[str]]:
    """The stored values of every score of ``calls`` as the JSON list the scripts decode
    (made for the whole batch at once, :func:`score_json_rows`), by ``id(call)``, one
    text per score in the call's order; calls of events have none."""
    scores = [it for call in calls for it in call.items if isinstance(it, StreamScore)]
    rows = iter(score_json_rows(scores))
    return {id(call): [next(rows) for _ in call.items] for call in calls
            if isinstance(call.items[0], StreamScore)}


def _sink_error(exc: Exception) -> Exception:
    """:class:`SinkUnavailable` (caused by ``exc``) for a lost connection or a refused
    write (an outage); ``exc`` itself for anything else (a bug, ``WRONGTYPE``)."""
    if not redis_unavailable(exc):
        return exc
    out = SinkUnavailable(f"redis: {refusal_code(exc) or type(exc).__name__}")
    out.__cause__ = exc
    return out


class _Call:
    """One command of a batch's pipeline and the items it writes: a stream's scores
    (one script call), or one event."""

    __slots__ = ("fence", "items", "stream_id")

    def __init__(self, stream_id: str, fence: int | None, items: list[Item]) -> None:
        self.stream_id = stream_id
        self.fence = fence
        self.items = items


def _calls(items: list[Item]) -> list[_Call]:
    """``items`` as pipeline commands: the scores of one stream (and one token) in one
    call, in order; each event in its own."""
    by_stream: dict[tuple[str, int | None], _Call] = {}
    out: list[_Call] = []
    for it in items:
        if isinstance(it, StreamScore):
            call = by_stream.get((it.stream_id, it.fence))
            if call is None:
                call = by_stream[(it.stream_id, it.fence)] = _Call(it.stream_id, it.fence, [])
                out.append(call)
            call.items.append(it)
        else:
            out.append(_Call(it.stream_id, it.fence, [it]))
    return out


_RELEASED_KEPT = 4096
"""How many released (stream, token) pairs a sink remembers (their leftover writes come
within a flush or two of the release)."""


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
        lapse_grace_s: float = 10.0,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self.lapse_grace_s = lapse_grace_s
        self._lapsed_since: dict[tuple[str, int], float] = {}
        self._released: dict[tuple[str, int], None] = {}  # insertion-ordered, bounded
        self.durability = durability or Durability()
        self.client = client
        self.scores_maxlen = scores_maxlen
        self.events_maxlen = events_maxlen
        self.fenced = FencedWriter(owner, cluster=is_cluster(client))
        self._plain = Lua(PLAIN_SCORES, whole=self.fenced.cluster)
        self._batch = Lua(PLAIN_BATCH)  # one server only (not used on a cluster)
        self.on_refused = on_refused
        self.refused = 0
        self._by_node = self.fenced.cluster and self.durability.enabled

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
        """One pipeline for the batch (module docstring): one script call per stream, one
        XADD per event, then WAIT with durability. Calls the server did not know the script
        of are sent again once it is loaded; calls that failed are left in
        :class:`PartlyWritten`, the first error as its cause."""
        calls = _calls(items)
        results, acks = await self._send(calls)
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            await self._guard(self._load())
            again, more = await self._send([calls[i] for i in missing])
            for i, r in zip(missing, again, strict=True):
                results[i] = r
            acks += more
        for ack in acks:
            try:
                self.durability.check(ack, "score batch")
            except NotReplicated as exc:
                await arediscover(self.client)  # maybe a deposed primary: ask the sentinels
                raise SinkUnavailable("redis: NOTREPLICATED") from exc
        failed: list[tuple[_Call, Exception]] = []
        copies: list[dict[str, str]] = []  # cluster: fenced events to copy to the shared log
        for call, r in zip(calls, results, strict=True):
            if isinstance(r, Exception):
                failed.append((call, r))
            elif call.fence is not None and int(r) == LAPSED and self._lapse_kept(call):
                failed.append((call, SinkUnavailable(
                    f"the lease of {call.stream_id} lapsed (fence {call.fence}): kept for "
                    "its renewal")))
            elif call.fence is not None and int(r) in (0, LAPSED):
                for _ in call.items:  # each a write refused as stale
                    self._refused(call.stream_id, call.fence)
            elif self.fenced.cluster and call.fence is not None and not isinstance(
                call.items[0], StreamScore
            ):
                copies.append(self.fenced.stored(call.fence, event_fields(call.items[0])))
        if self._lapsed_since:  # a lease written under again: its next lapse starts anew
            for call, r in zip(calls, results, strict=True):
                if call.fence is not None and not isinstance(r, Exception) and int(r) in (1, 2):
                    self._lapsed_since.pop((call.stream_id, call.fence), None)
        if copies:
            await self._copy_events(copies)
        if failed:
            unwritten = [it for call, _ in failed for it in call.items]
            raise PartlyWritten(unwritten, _sink_error(failed[0][1]))

    def released(self, stream_id: str, token: int) -> None:
        """This replica no longer holds ``stream_id``'s lease under ``token`` (released,
        lost): its writes answered lapsed from now on are refused at once."""
        self._released[(stream_id, token)] = None
        if len(self._released) > _RELEASED_KEPT:
            del self._released[next(iter(self._released))]

    def _lapse_kept(self, call: _Call) -> bool:
        """Whether a call answered :data:`~monitor.live.sinks.fenced.LAPSED` is kept for
        the lease's renewal: yes until its lease has been lapsed ``lapse_grace_s`` (from
        the first such answer for this stream and token), then no (refused); no at once
        for a lease :meth:`released`."""
        key = (call.stream_id, call.fence or 0)
        if key in self._released:
            return False
        now = time.monotonic()
        first = self._lapsed_since.setdefault(key, now)
        if now - first <= self.lapse_grace_s:
            return True
        del self._lapsed_since[key]
        return False

    async def _send(self, calls: list[_Call]) -> tuple[list[Any], list[Any]]:
        """The pipeline of ``calls`` (and WAIT): one reply (or error) per call, and WAIT's
        reply in a list (empty without durability). A lost connection or a refused WAIT
        raises :class:`SinkUnavailable` for the whole batch. On a cluster with durability:
        :meth:`_send_by_node`.

        On one server the unfenced scores of several streams go in one script call
        (:data:`~monitor.live.sinks.fenced.PLAIN_BATCH`: per call of the pipeline
        redis-py spends about 15 us packing it and reading its reply, and at hundreds
        of streams a batch holds about one score per stream); its reply is one result
        per stream, handed to each call as if it had been sent alone."""
        values = _score_values(calls)
        if self._by_node:
            return await self._send_by_node(calls, values), []
        pipe = self.client.pipeline(transaction=False)
        together = [c for c in calls if c.fence is None and isinstance(c.items[0], StreamScore)]
        if self.fenced.cluster or len(together) < 2:
            together = []
        if together:
            self._queue_together(pipe, together, values)
        joined = {id(c) for c in together}
        alone = [c for c in calls if id(c) not in joined]
        for call in alone:
            self._queue(pipe, call, values.get(id(call), []))
        waits = self.durability.queue_wait(pipe)
        replies: list[Any] = await self._guard(pipe.execute(raise_on_error=False))
        acks = [replies.pop()] if waits else []
        if acks and isinstance(acks[0], Exception):
            raise _sink_error(acks[0])
        result_of: dict[int, Any] = {}
        if together:
            first = replies.pop(0)
            if isinstance(first, Exception):  # the whole call (NOSCRIPT, a refusal)
                result_of.update((id(c), first) for c in together)
            else:
                for c, r in zip(together, first, strict=True):
                    if isinstance(r, bytes):
                        r = r.decode(errors="replace")
                    result_of[id(c)] = ResponseError(r) if isinstance(r, str) else r
        result_of.update((id(c), r) for c, r in zip(alone, replies, strict=True))
        return [result_of[id(c)] for c in calls], acks

    def _queue_together(self, pipe: Any, calls: list[_Call],
                        values: dict[int, list[str]]) -> None:
        """Queue the unfenced scores of ``calls`` (several streams) as one script call."""
        keys_: list[str] = []
        for call in calls:
            keys_ += (keys.stream_scores(call.stream_id), keys.stream_latest(call.stream_id))
        counts = json.dumps([len(call.items) for call in calls])
        self._batch.queue(pipe, keys_, [str(self.scores_maxlen), NAMES_JSON, counts,
                                        *(v for c in calls for v in values[id(c)])])

    async def _send_by_node(self, calls: list[_Call], values: dict[int, list[str]]
                            ) -> list[Any]:
        """Cluster with durability: the calls grouped by the primary serving each call's
        slot, one pipeline per node ending with WAIT on its connection
        (:func:`~monitor.redis_conn.anode_pipelines`). One reply (or error) per call; a
        call of a node that failed, answered ``MOVED`` or whose replicas did not
        acknowledge in time gets that error (e.g. :class:`NotReplicated`): it counts as
        not written and stays buffered (fenced scores are not repeated when written
        again)."""
        def queue(call: _Call) -> Callable[[Any], None]:
            return lambda pipe: self._queue(pipe, call, values.get(id(call), []))

        done = await self._guard(anode_pipelines(
            self.client, [(self._slot_key(c), queue(c)) for c in calls],  # type: ignore[arg-type]
            self.durability, "score batch",
        ))
        return [r if fault is None else fault for r, fault in done]

    @staticmethod
    def _slot_key(call: _Call) -> str:
        """A key of the slot ``call`` writes: its stream's, or ``restrav:events`` for an
        event without a fencing token (a fenced one goes to its stream's own log)."""
        if call.fence is None and not isinstance(call.items[0], StreamScore):
            return keys.EVENTS
        return keys.stream_scores(call.stream_id)

    async def _copy_events(self, events: list[dict[str, str]]) -> None:
        """Cluster: copy fenced events stored in their streams' own logs to
        ``restrav:events``. They are stored already: a failure here is logged, not
        retried (the batch must not write them twice)."""
        def xadd(ev: Any, pipe: Any) -> None:
            pipe.xadd(keys.EVENTS, ev, maxlen=self.events_maxlen, approximate=True)

        try:
            if self._by_node:  # with WAIT, as the events' first writes
                done = await self._guard(anode_pipelines(
                    self.client,  # type: ignore[arg-type]
                    [(keys.EVENTS, functools.partial(xadd, ev)) for ev in events],
                    self.durability, "alert event copy",
                ))
                errors = [f or r for r, f in done if f or isinstance(r, Exception)]
                if errors:
                    raise SinkUnavailable(str(errors[0]))
            else:
                pipe = self.client.pipeline(transaction=False)
                for ev in events:
                    xadd(ev, pipe)
                await self._guard(pipe.execute())
        except SinkUnavailable as exc:
            log.warning("%d alert event(s) kept in their stream's own log only "
                        "(restrav:{STREAM}:events): the copy to %s failed: %s",
                        len(events), keys.EVENTS, exc)

    @staticmethod
    async def _guard(aw: Any) -> Any:
        """Await ``aw``; a lost connection or a refusal raises :class:`SinkUnavailable`."""
        try:
            return await aw
        except (RedisError, OSError) as exc:
            err = _sink_error(exc)
            if err is exc:
                raise
            raise err from exc

    async def _load(self) -> None:
        await self._plain.load(self.client)
        if not self.fenced.cluster:
            await self._batch.load(self.client)
        await self.fenced.load(self.client)

    def _queue(self, pipe: Any, call: _Call, values: list[str]) -> None:
        """Queue one call's command on ``pipe``; a call of scores takes its scores' values
        (:func:`~.fields.score_json_rows`: each score's values as one JSON list, decoded
        by the script; their stored text is the strings)."""
        first = call.items[0]
        if isinstance(first, StreamScore):
            if call.fence is not None:
                self.fenced.scores(pipe, call.stream_id, call.fence, SCORE_FIELDS, values,
                                   self.scores_maxlen)
                return
            self._plain.queue(pipe, (keys.stream_scores(call.stream_id),
                                     keys.stream_latest(call.stream_id)),
                              [str(self.scores_maxlen), NAMES_JSON, *values])
        elif call.fence is not None:
            self.fenced.event(pipe, call.stream_id, call.fence, event_fields(first),
                              self.events_maxlen)
        else:  # an alert's event, or who changed a stream
            ev: Any = event_fields(first)
            pipe.xadd(keys.EVENTS, ev, maxlen=self.events_maxlen, approximate=True)

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
