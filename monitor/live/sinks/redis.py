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
``restrav:events`` (``XADD MAXLEN ~``). Field values are strings (:data:`SCORE_FIELDS`);
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
``restrav_stale_writes_refused_total{stream}`` and reported to ``on_refused``.

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
in the stream's own log only. ``WAIT`` is not used there (serve refuses
``redis.wait_replicas`` > 0 on a cluster).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from pydantic_core import to_json
from redis.exceptions import NoScriptError, RedisError, ResponseError

from ... import keys
from ...metrics import StreamMetrics
from ...redis_conn import Durability, arediscover, async_redis_client, is_cluster
from ...redis_faults import NotReplicated, redis_unavailable, refusal_code
from ...types import StreamScore
from ..alerts import Event
from .base import BufferedSink, Item, PartlyWritten, SinkUnavailable
from .fenced import PLAIN_BATCH, PLAIN_SCORES, FencedWriter, Lua

log = logging.getLogger(__name__)

SCORE_FIELDS: tuple[str, ...] = (
    "stream", "seq", "segment", "start_s", "end_s", "p_ai", "threshold", "is_ai", "flagged",
    "repeated_samples", "zero_steps", "zero_step_angle_deg", "wall_start", "wall_end",
    "scored_at", "features",
)
"""The fields of a stored score, in order (the keys of :meth:`StreamScore.to_json`)."""

_NAMES_JSON = json.dumps(SCORE_FIELDS)


def _opt(v: object) -> str:
    return "" if v is None else str(v)


def score_values(score: StreamScore, features: str | None = None) -> list[str]:
    """The string values of one stored score, in the order of :data:`SCORE_FIELDS`:
    ``str`` of each value of ``score.to_json(features=True)``, ``""`` for None, ``"1"``
    / ``"0"`` for booleans, ``features`` a JSON list (built without the dict; or the
    given text, which must be ``json.dumps`` of the list: :func:`features_json`)."""
    s = score.score
    w = s.window
    is_ai = s.is_ai
    return [
        score.stream_id, str(score.seq), str(score.segment), str(round(score.start_s, 6)),
        str(round(score.end_s, 6)), _opt(s.p_ai), _opt(s.threshold),
        "" if is_ai is None else ("1" if is_ai else "0"), "1" if s.flagged else "0",
        _opt(s.repeated_samples), str(w.repeated_frames), str(w.zero_step_angle_deg),
        str(round(score.wall_start, 6)), str(round(score.wall_end, 6)),
        str(round(score.scored_at, 6)),
        json.dumps(w.features.tolist()) if features is None else features,
    ]


_SHORT_MIN = 1e-4
"""Below this magnitude ``repr`` of a float switches to an exponent written with two
digits at least (``1e-05``), where :func:`pydantic_core.to_json` writes ``0.00001`` or
``1e-5``. From it up, and for 0, NaN and the infinities, both write the same text
(the shortest that reads back, ``1e+16`` from 1e16 on); tests/test_sinks.py checks it."""


_PROBES = [0.1, 1 / 3, 1e-4, -2.5e-4, 5.0, -0.0, 0.0, 1e15, 1e16, 1.2345678901234568e17,
           1e22, 1.7976931348623157e308, float("nan"), float("inf"), float("-inf")]


@functools.cache
def _to_json_agrees() -> bool:
    """Whether this pydantic_core writes the probes as ``json.dumps`` does (checked once:
    another version may format floats otherwise; then :func:`features_json` keeps to
    ``json.dumps``)."""
    try:
        text = to_json([_PROBES], inf_nan_mode="constants").decode()
    except (TypeError, ValueError):
        return False
    return "[" + text[2:-2].replace(",", ", ") + "]" == json.dumps(_PROBES)


def features_json(rows: np.ndarray) -> list[str]:
    """``json.dumps(row.tolist())`` of each row of a 2-D float array: the same text, made
    in one :func:`pydantic_core.to_json` call for the rows whose every value is 0, not
    finite or at least :data:`_SHORT_MIN` in magnitude (about 10x faster: the float
    formatting of ``json.dumps`` was the Redis sink's largest cost), ``json.dumps`` for
    the others (and for all when this pydantic_core formats the probes otherwise)."""
    if rows.ndim != 2 or rows.dtype.kind != "f":
        raise ValueError(f"features_json needs a 2-D float array, not {rows.dtype} "
                         f"{rows.shape}")
    a = np.abs(rows)
    with np.errstate(invalid="ignore"):
        fast = ((a >= _SHORT_MIN) | (a == 0) | ~np.isfinite(a)).all(axis=1)
    if not _to_json_agrees():
        fast[:] = False
    out = [""] * rows.shape[0]
    quick = np.flatnonzero(fast).tolist()
    if quick:
        text = to_json(rows[quick].tolist(), inf_nan_mode="constants").decode()
        for i, part in zip(quick, text[2:-2].split("],["), strict=True):
            out[i] = "[" + part.replace(",", ", ") + "]"
    for i in np.flatnonzero(~fast).tolist():
        out[i] = json.dumps(rows[i].tolist())
    return out


def score_rows(scores: Sequence[StreamScore]) -> list[list[str]]:
    """:func:`score_values` of each score (the same strings), the features' text of all
    of them made at once (:func:`features_json`) when they are float rows of one length."""
    feats = [s.score.window.features for s in scores]
    if not feats or any(f.ndim != 1 or f.dtype.kind != "f" or len(f) != len(feats[0])
                        for f in feats):
        return [score_values(s) for s in scores]
    texts = features_json(np.stack(feats))
    return [score_values(s, t) for s, t in zip(scores, texts, strict=True)]


def score_fields(score: StreamScore) -> dict[str, str]:
    """The flat string fields stored for one score (stream entry and latest hash)."""
    return dict(zip(SCORE_FIELDS, score_values(score), strict=True))


def event_fields(event: Event) -> dict[str, str]:
    """The flat string fields stored for one event (an alert's, or who changed what)."""
    return {k: ("" if v is None else str(v)) for k, v in event.to_json().items()}


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
        self.fenced = FencedWriter(owner, cluster=is_cluster(client))
        self._plain = Lua(PLAIN_SCORES, whole=self.fenced.cluster)
        self._batch = Lua(PLAIN_BATCH)  # one server only (not used on a cluster)
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
            elif call.fence is not None and int(r) == 0:
                for _ in call.items:  # each a write refused as stale
                    self._refused(call.stream_id, call.fence)
            elif self.fenced.cluster and call.fence is not None and not isinstance(
                call.items[0], StreamScore
            ):
                copies.append(self.fenced.stored(call.fence, event_fields(call.items[0])))
        if copies:
            await self._copy_events(copies)
        if failed:
            unwritten = [it for call, _ in failed for it in call.items]
            raise PartlyWritten(unwritten, _sink_error(failed[0][1]))

    async def _send(self, calls: list[_Call]) -> tuple[list[Any], list[Any]]:
        """The pipeline of ``calls`` (and WAIT): one reply (or error) per call, and WAIT's
        reply in a list (empty without durability). A lost connection or a refused WAIT
        raises :class:`SinkUnavailable` for the whole batch.

        On one server the unfenced scores of several streams go in one script call
        (:data:`~monitor.live.sinks.fenced.PLAIN_BATCH`: per call of the pipeline
        redis-py spends about 15 us packing it and reading its reply, and at hundreds
        of streams a batch holds about one score per stream); its reply is one result
        per stream, handed to each call as if it had been sent alone."""
        pipe = self.client.pipeline(transaction=False)
        scores = [it for call in calls for it in call.items if isinstance(it, StreamScore)]
        rows = iter(score_rows(scores))  # the batch's values at once, in the calls' order
        values = {id(call): [next(rows) for _ in call.items] for call in calls
                  if isinstance(call.items[0], StreamScore)}
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
                        values: dict[int, list[list[str]]]) -> None:
        """Queue the unfenced scores of ``calls`` (several streams) as one script call."""
        keys_: list[str] = []
        for call in calls:
            keys_ += (keys.stream_scores(call.stream_id), keys.stream_latest(call.stream_id))
        counts = json.dumps([len(call.items) for call in calls])
        self._batch.queue(pipe, keys_, [str(self.scores_maxlen), _NAMES_JSON, counts,
                                        *(to_json(v) for c in calls for v in values[id(c)])])

    async def _copy_events(self, events: list[dict[str, str]]) -> None:
        """Cluster: copy fenced events stored in their streams' own logs to
        ``restrav:events``. They are stored already: a failure here is logged, not
        retried (the batch must not write them twice)."""
        pipe = self.client.pipeline(transaction=False)
        for ev in events:
            fields: Any = ev
            pipe.xadd(keys.EVENTS, fields, maxlen=self.events_maxlen, approximate=True)
        try:
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

    def _queue(self, pipe: Any, call: _Call, values: list[list[str]]) -> None:
        """Queue one call's command on ``pipe``; a call of scores takes its scores' values
        (:func:`score_values`, one list per score). Each score's values go as one JSON
        list (decoded by the script; their stored text is the strings)."""
        first = call.items[0]
        if isinstance(first, StreamScore):
            rows = values
            if call.fence is not None:
                self.fenced.scores(pipe, call.stream_id, call.fence, SCORE_FIELDS, rows,
                                   self.scores_maxlen)
                return
            self._plain.queue(pipe, (keys.stream_scores(call.stream_id),
                                     keys.stream_latest(call.stream_id)),
                              [str(self.scores_maxlen), _NAMES_JSON, *map(to_json, rows)])
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
