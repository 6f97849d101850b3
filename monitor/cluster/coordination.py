"""The lease coordination of a clustered ``serve`` replica (see :mod:`monitor.cluster.manager`).

:class:`LeaseCoordination` is a :class:`~monitor.live.service.StreamManager` that runs
exactly the streams whose lease it holds: every ``renew_interval_s`` its tick
renews the heartbeat and the leases (a lease not renewed stops its stream at
once), reads the shared desired set back (a set lost with Redis' data is written
back by :class:`~monitor.live.desired.DesiredSetKeeper`), applies edits to the streams
it owns, releases streams above its fair share and acquires unowned ones
(:func:`monitor.cluster.assignment.plan`; orphans after :data:`ORPHAN_TICKS` ticks), and
publishes the owned streams' status. While draining it only keeps renewing.
:class:`~monitor.cluster.manager.ClusteredStreamManager` adds the control surface on top.

State, all touched on the event loop: ``owned`` (stream -> fencing token, oldest
acquisition first), ``_desired`` (the shared set as last read or edited),
``_owners``/``_remote`` (every stream's lease and published status, for queries).
Local streams are started and stopped under the manager's lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from .. import keys
from ..config import ServeSettings, StreamSpec
from ..errors import InputError
from ..live.desired import DesiredSetKeeper, RedisDesiredStore, spec_from_record
from ..live.engine import Engine
from ..live.service import StreamManager
from ..live.sinks.base import Sink
from ..live.stream_state import StreamStatus
from ..metrics import StreamMetrics
from ..redis_conn import Durability
from .assignment import plan
from .leases import Lease, LeaseStore, ReplicaInfo

log = logging.getLogger("restrav.cluster")

ORPHAN_TICKS = 3
"""Ticks a stream may stay unowned before any replica with free capacity takes it."""

REDIS_ERRORS = (RedisError, OSError, ConnectionError, TimeoutError)
"""What a Redis round trip raises when Redis is unreachable or refuses."""


class LeaseCoordination(StreamManager):
    """Runs the streams this replica leases; the coordination loop (module docstring)."""

    def __init__(
        self,
        engine: Engine,
        sink: Sink,
        settings: ServeSettings,
        metrics: StreamMetrics | None,
        client: Any,
        replica: str,
        durability: Durability | None = None,
        **kw: Any,
    ) -> None:
        store = RedisDesiredStore(client)
        super().__init__(engine, sink, settings, metrics, store, **kw)
        self.desired_store = store
        self.client = client
        self.cfg = settings.cluster
        self.replica = replica
        self.leases = LeaseStore(client, replica, self.cfg.lease_ttl_s, durability)
        self.owned: dict[str, int] = {}  # stream -> fencing token, oldest acquisition first
        self._desired: dict[str, tuple[StreamSpec, bool]] = {}
        self.keeper = DesiredSetKeeper(
            store, metrics.desired_set_restored.inc if metrics is not None else None
        )
        self._owners: dict[str, Lease | None] = {}
        self._remote: dict[str, StreamStatus] = {}
        self._unowned_ticks: dict[str, int] = {}
        self._draining = False
        self._loop_task: asyncio.Task[None] | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self._renewed_at = time.monotonic()
        self.on_released: Callable[[str, int], None] | None = None
        """Told of every lease this replica stops holding (released, lost, handed over):
        the Redis sink then refuses its leftover writes at once instead of keeping them
        for a renewal that will not come (:class:`~monitor.live.sinks.RedisSink`)."""
        if metrics is not None:
            metrics.capacity_streams.set(self.cfg.capacity_streams)

    def _ended(self, stream_id: str, token: int) -> None:
        """This replica no longer holds ``stream_id`` under ``token``."""
        if self.on_released is not None:
            self.on_released(stream_id, token)

    async def _keep_leases(self) -> None:
        """While draining: every interval, the draining heartbeat and the renewal of the
        leases still held; one found lost is dropped (its late windows with it) and
        counted. Nothing is acquired, released or started here."""
        while True:
            await asyncio.sleep(self.cfg.renew_interval_s)
            try:
                await self.leases.heartbeat(self._info())
                renewed = await self.leases.renew(dict(self.owned))
            except REDIS_ERRORS as exc:
                log.warning("leases not renewed while draining (%s)", type(exc).__name__)
                continue
            for sid, ok in renewed.items():
                if ok:
                    if self.metrics is not None:
                        self.metrics.lease_renewals.inc()
                else:
                    await self._lose(sid, "taken")

    def _info(self) -> ReplicaInfo:
        cap = 0 if self._draining else self.cfg.capacity_streams
        return ReplicaInfo(self.replica, cap, len(self.owned), self._draining)

    async def _apply_local(self, spec: StreamSpec) -> None:
        """Bring an owned stream in line with a changed spec (lock held)."""
        st = self._streams.get(spec.id)
        if st is None or st.spec == spec:
            return
        if st.spec.model_copy(update={"paused": spec.paused}) == spec:
            st.spec = spec
            if spec.paused:
                await self._pause_local(st)
            else:
                st.status.paused = False
                self.runner.start(st)
            return
        token = self.owned[spec.id]
        offset = st.seq_offset + st.status.windows_scored
        await self._stop_stream(st, forget=False)
        self._start_leased(spec, False, token, offset)

    def _start_leased(self, spec: StreamSpec, lost: bool, token: int, seq_offset: int) -> None:
        try:
            kind = self.validate(spec)
        except InputError as exc:
            log.warning("stream %s not started: %s", spec.id, exc.message)
            kind = spec.kind or "unknown"
            st = self._start_stream(spec.model_copy(update={"paused": True}), kind,
                                    fence=token, seq_offset=seq_offset)
            self.runner.error(st, exc.code, exc.message)
            self.runner.set_state(st, "failed")
        else:
            st = self._start_stream(spec, kind, lost, fence=token, seq_offset=seq_offset)
        st.status.owner = self.replica

    async def _give_up(self, stream_id: str, reason: str, forget: bool = False) -> None:
        """Stop an owned stream and release its lease (lock held)."""
        token = self.owned.pop(stream_id, None)
        st = self._streams.pop(stream_id, None)
        if st is not None:
            self.runner.gap(st, "handover")
            await self._stop_stream(st, forget=forget)
        if token is not None:
            # the stream's last scores may still be in the sink's buffer, fenced with
            # this token: written after the release they would be refused as stale and
            # lost, so they go first (bounded: one renew interval, as a drain's flush)
            if not await self.sink.flush(self.cfg.renew_interval_s):
                log.warning("stream %s: sink not flushed before its release", stream_id)
            with contextlib.suppress(*REDIS_ERRORS):
                await self.leases.release(stream_id, token)
            self._ended(stream_id, token)
            if self.metrics is not None:
                self.metrics.handovers.labels(reason).inc()
        log.info("stream %s handed over (%s)", stream_id, reason)

    async def _lose(self, stream_id: str, reason: str) -> None:
        """The lease is gone (or was never provably ours): stop at once, release nothing."""
        async with self._lock:
            token = self.owned.pop(stream_id, None)
            if token is None:
                return
            self._ended(stream_id, token)
            if self.metrics is not None:  # counted with the loss, before the stop's awaits
                self.metrics.lease_losses.labels(reason).inc()
            st = self._streams.pop(stream_id, None)
            if st is not None:
                self.runner.gap(st, "lease_lost")
                await self._stop_stream(st, forget=False)
        log.warning("stream %s: lease lost (%s); stopped", stream_id, reason)

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except REDIS_ERRORS as exc:
                if self.metrics is not None:
                    self.metrics.cluster_errors.inc()
                log.warning("cluster tick failed on Redis (%s)", type(exc).__name__)
                await self._expire_if_unrenewed()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.cfg.renew_interval_s)

    async def _expire_if_unrenewed(self) -> None:
        if self.owned and time.monotonic() - self._renewed_at > self.cfg.lease_ttl_s:
            for sid in list(self.owned):
                await self._lose(sid, "expired")

    async def tick(self) -> None:
        """One round: heartbeat, renew, follow the desired set, rebalance, acquire."""
        m = self.metrics
        await self.leases.heartbeat(self._info())
        t0 = time.monotonic()
        renewed = await self.leases.renew(dict(self.owned))
        self._renewed_at = t0
        for sid, ok in renewed.items():
            if not ok:
                await self._lose(sid, "taken")
            elif m is not None:
                m.lease_renewals.inc()
        self._desired = await self._load_desired_strict()
        async with self._lock:
            for sid in list(self.owned):
                d = self._desired.get(sid)
                if d is None:
                    await self._give_up(sid, "removed", forget=True)
                    await self.client.hdel(keys.STREAM_STATUS, sid)
                else:
                    await self._apply_local(d[0])
        ids = sorted(self._desired)
        self._owners = await self.leases.owners(ids)
        replicas = await self.leases.replicas()
        owners = {s: (lease.owner if lease else None) for s, lease in self._owners.items()}
        for sid, o in owners.items():
            self._unowned_ticks[sid] = self._unowned_ticks.get(sid, 0) + 1 if o is None else 0
        for sid in set(self._unowned_ticks) - set(owners):
            del self._unowned_ticks[sid]
        p = plan(self.replica, replicas, owners, list(reversed(self.owned)),
                 self.cfg.max_moves_per_interval)
        if not self._draining:
            async with self._lock:
                for sid in p.release:
                    if sid in self.owned:
                        await self._give_up(sid, "rebalance")
            free = self.cfg.capacity_streams - len(self.owned)
            orphans = [s for s, n in sorted(self._unowned_ticks.items())
                       if n >= ORPHAN_TICKS and s not in p.acquire]
            for sid in [*p.acquire, *orphans][: max(0, free)]:
                await self._acquire(sid)
        await self._publish_status()
        if m is not None:
            m.owned_streams.set(len(self.owned))
            m.replicas.set(len(replicas))
            m.unowned_streams.set(sum(1 for o in owners.values() if o is None))

    async def _load_desired_strict(self) -> dict[str, tuple[StreamSpec, bool]]:
        """The shared desired set; Redis errors propagate (an outage must not read as
        "every stream was removed"), and a set lost with Redis' data is written back
        first (:class:`~monitor.live.desired.DesiredSetKeeper`)."""
        records = await self.keeper.load()
        out: dict[str, tuple[StreamSpec, bool]] = {}
        for rec in records.values():
            try:
                spec, lost = spec_from_record(rec)
            except ValueError:
                continue  # logged when restored; an edit through the API replaces it
            out[spec.id] = (spec, lost)
        return out

    async def _acquire(self, stream_id: str) -> None:
        token = await self.leases.acquire(stream_id)
        if token is None:
            return
        last = await self.leases.last_seq(stream_id)
        async with self._lock:
            d = self._desired.get(stream_id)
            if d is None or self._draining:
                await self.leases.release(stream_id, token)
                return
            self.owned[stream_id] = token
            self._owners[stream_id] = Lease(self.replica, token)
            self._unowned_ticks[stream_id] = 0
            old = self._streams.pop(stream_id, None)
            if old is not None:  # a local (WHIP) stream of the same id gives way
                await self._stop_stream(old, forget=False)
            self._start_leased(d[0], d[1], token, 0 if last is None else last + 1)
        if self.metrics is not None:
            self.metrics.lease_acquisitions.inc()
        log.info("stream %s: lease acquired (fence %d)", stream_id, token)

    async def _publish_status(self) -> None:
        """Publish the status of owned streams; read everyone's for the API."""
        mine = {sid: json.dumps(self._streams[sid].status.to_json())
                for sid in self.owned if sid in self._streams}
        async with self.client.pipeline(transaction=False) as pipe:
            if mine:
                pipe.hset(keys.STREAM_STATUS, mapping=mine)
            pipe.hgetall(keys.STREAM_STATUS)
            res = await pipe.execute()
        remote: dict[str, StreamStatus] = {}
        for k, v in res[-1].items():
            sid = k.decode() if isinstance(k, bytes) else str(k)
            if sid not in self._desired:
                continue
            with contextlib.suppress(KeyError, TypeError, ValueError):
                remote[sid] = StreamStatus.from_json(json.loads(v))
        self._remote = remote

