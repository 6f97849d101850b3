"""Live streams shared by many `restrav serve` replicas: leases, assignment, handover.

Contract (``serve.cluster.enabled``; Redis is the system of record):

* The desired set (``restrav:streams``) is shared: the control API of any
  replica edits it, and every replica reads it back on each tick. A stream
  runs only on the replica holding its lease (:mod:`monitor.leases`), started
  with the lease's fencing token; its scores, ``latest`` and events carry the
  token and Redis refuses them once the token is stale (:mod:`monitor.sinks.fenced`).
* Every ``renew_interval_s`` the :class:`ClusteredStreamManager` tick: renews
  its heartbeat and leases (a lease not renewed means the stream stops at
  once: the window ends, no window spans an ownership change), applies edits
  of the desired set to the streams it owns, then follows its part of the
  :func:`monitor.assignment.plan`: releases streams above its fair share
  (bounded per interval) and acquires unowned streams assigned to it. A stream
  unowned for three ticks in a row is taken by any replica with free capacity
  (the planned one may be stuck). On acquisition ``seq`` continues after the
  newest stored score, so the owners' ``seq`` ranges never overlap.
* When Redis cannot be reached for a whole lease TTL the replica stops every
  stream it owned (it can no longer prove ownership) and acquires again later.
* Redis losing its data (a restart without persistence) is not read as "every
  stream removed": :class:`~monitor.desired.DesiredSetKeeper` writes back the set
  this replica last knew (counted in ``restrav_desired_set_restored_total``); its
  streams keep running or are acquired again. Removing streams through the API
  still stops them.
* A write refused as stale stops the stream at once (lease lost, ``refused``).
* Drain (SIGTERM): :meth:`stop` marks the replica draining in its heartbeat (it
  gets nothing new) and stops its streams, and keeps renewing the leases it
  holds while the engine and the sinks are flushed (however long that takes,
  so the last scores land under a lease that is still ours); then
  :meth:`handover` releases every lease, so other replicas take the streams on
  their next tick without waiting for the TTL.
* ``GET /streams`` on any replica lists the whole desired set with each
  stream's ``owner``: streams owned here show their live status, others the
  status their owner published in ``restrav:streams:status`` (state
  ``unassigned`` while no replica owns them).
* WHIP streams (added with ``persist=False``) are pushed to one replica: they
  run there without a lease, as in a single-replica service.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from redis.exceptions import RedisError

from . import keys
from .assignment import plan
from .config import ServeSettings, StreamSpec
from .desired import DesiredSetKeeper, RedisDesiredStore, record_for, spec_from_record
from .engine import Engine
from .errors import InputError, RestravError
from .leases import Lease, LeaseStore, ReplicaInfo
from .metrics import StreamMetrics
from .redaction import redact_url
from .service import StreamManager
from .sinks.base import Sink
from .sources import kind_for
from .stream_task import StreamStatus

log = logging.getLogger("restrav.cluster")

ORPHAN_TICKS = 3
"""Ticks a stream may stay unowned before any replica with free capacity takes it."""

_REDIS_ERRORS = (RedisError, OSError, ConnectionError, TimeoutError)


class DesiredSetUnavailable(RestravError):
    """The shared desired set cannot be edited now (Redis unreachable); retry later."""

    code = "redis_unavailable"


class ClusteredStreamManager(StreamManager):
    """A :class:`~monitor.service.StreamManager` that runs only the streams it leases."""

    def __init__(
        self,
        engine: Engine,
        sink: Sink,
        settings: ServeSettings,
        metrics: StreamMetrics | None,
        client: Any,
        replica: str,
        **kw: Any,
    ) -> None:
        store = RedisDesiredStore(client)
        super().__init__(engine, sink, settings, metrics, store, **kw)
        self.desired_store = store
        self.client = client
        self.cfg = settings.cluster
        self.replica = replica
        self.leases = LeaseStore(client, replica, self.cfg.lease_ttl_s)
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
        if metrics is not None:
            metrics.capacity_streams.set(self.cfg.capacity_streams)

    # --- queries (the whole desired set, wherever it runs) ---------------------------

    def __contains__(self, stream_id: str) -> bool:
        return stream_id in self._desired or stream_id in self._streams

    def __len__(self) -> int:
        return len(set(self._desired) | set(self._streams))

    def get(self, stream_id: str) -> StreamStatus | None:
        """The live status if the stream runs here, else the owner's published one."""
        st = self._streams.get(stream_id)
        if st is not None:
            return st.status
        if stream_id not in self._desired:
            return None
        return self._remote_status(stream_id)

    def spec(self, stream_id: str) -> StreamSpec | None:
        """The desired spec (or the local one of a WHIP stream), or None."""
        d = self._desired.get(stream_id)
        if d is not None:
            return d[0]
        st = self._streams.get(stream_id)
        return st.spec if st else None

    def list(self) -> list[StreamStatus]:
        """Every stream of the desired set plus local ones, by id."""
        out = []
        for sid in sorted(set(self._desired) | set(self._streams)):
            s = self.get(sid)
            if s is not None:
                out.append(s)
        return out

    def _remote_status(self, stream_id: str) -> StreamStatus:
        spec, _ = self._desired[stream_id]
        lease = self._owners.get(stream_id)
        remote = self._remote.get(stream_id)
        if remote is not None and lease is not None and remote.owner == lease.owner:
            remote.paused = spec.paused
            return remote
        try:
            kind = kind_for(spec)
        except InputError:
            kind = spec.kind or "unknown"
        return StreamStatus(
            id=spec.id, kind=kind, url=redact_url(spec.url),
            state="unassigned" if lease is None else "starting",
            state_since=time.time(), paused=spec.paused, hop=self._hop(spec),
            owner=lease.owner if lease else None, fence=lease.fence if lease else None,
        )

    # --- control (edits the shared desired set) --------------------------------------

    async def _store_put(self, spec: StreamSpec) -> None:
        record = record_for(spec)
        try:
            await self.desired_store.put(spec.id, record)
        except _REDIS_ERRORS as exc:
            raise DesiredSetUnavailable(
                f"the desired set in Redis is unreachable ({type(exc).__name__}); retry later"
            ) from exc
        self.keeper.remember(spec.id, record)

    async def add(self, spec: StreamSpec, from_api: bool = False, persist: bool = True) -> str:
        """Put ``spec`` in the shared desired set (``persist=False``: run it here only)."""
        if not persist:
            return await super().add(spec, from_api, persist=False)
        self.validate(spec, from_api)
        if not self._accepting:
            raise RestravError("shutting down; not accepting streams")
        old = self._desired.get(spec.id)
        if old is not None and old[0] == spec and not old[1]:
            return "unchanged"
        await self._store_put(spec)
        self._desired[spec.id] = (spec, False)
        async with self._lock:
            if spec.id in self.owned:
                await self._apply_local(spec)
        self._wake.set()
        return "created" if old is None else "replaced"

    async def remove(self, stream_id: str) -> bool:
        """Delete the stream from the desired set; its owner stops it."""
        if stream_id not in self._desired:
            return await super().remove(stream_id)
        try:
            await self.desired_store.delete(stream_id)
        except _REDIS_ERRORS as exc:
            raise DesiredSetUnavailable(
                f"the desired set in Redis is unreachable ({type(exc).__name__}); retry later"
            ) from exc
        self._desired.pop(stream_id, None)
        self.keeper.forget(stream_id)
        async with self._lock:
            if stream_id in self.owned:
                await self._give_up(stream_id, "removed", forget=True)
        with contextlib.suppress(*_REDIS_ERRORS):
            await self.client.hdel(keys.STREAM_STATUS, stream_id)
        return True

    async def _set_paused(self, stream_id: str, paused: bool) -> StreamStatus | None:
        d = self._desired.get(stream_id)
        if d is None:
            return await (super().pause(stream_id) if paused else super().resume(stream_id))
        if d[0].paused != paused:
            spec = d[0].model_copy(update={"paused": paused})
            await self._store_put(spec)
            self._desired[stream_id] = (spec, d[1])
            async with self._lock:
                if stream_id in self.owned:
                    await self._apply_local(spec)
        return self.get(stream_id)

    async def pause(self, stream_id: str) -> StreamStatus | None:
        """Pause in the desired set (the owner stops reading); None if unknown."""
        return await self._set_paused(stream_id, True)

    async def resume(self, stream_id: str) -> StreamStatus | None:
        """Resume in the desired set; None if unknown."""
        return await self._set_paused(stream_id, False)

    async def restore(self, config_specs: tuple[StreamSpec, ...] = ()) -> None:
        """Seed the config's streams into the shared desired set (stored ones win) and
        start the coordination loop; streams start when their lease is ours."""
        desired = await self.load_desired(config_specs)
        try:
            stored, _ = await self.desired_store.load_marked()
            for spec in config_specs:
                if spec.id not in stored:
                    await self.desired_store.put(spec.id, record_for(spec))
        except _REDIS_ERRORS as exc:
            log.warning("config streams not added to the desired set yet (%s)", exc)
        self._desired = desired
        self._loop_task = asyncio.create_task(self._loop(), name="cluster-coordinator")
        self.restored = True

    async def stop(self) -> None:
        """Drain, first step: draining in the heartbeat, coordination stops, every
        stream stops; the leases are kept, and renewed, until :meth:`handover`."""
        self._draining = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        with contextlib.suppress(*_REDIS_ERRORS):
            await self.leases.heartbeat(self._info())
        self._drain_task = asyncio.create_task(self._keep_leases(), name="cluster-drain-leases")
        await super().stop()

    async def _keep_leases(self) -> None:
        """While draining: every interval, the draining heartbeat and the renewal of the
        leases still held; one found lost is dropped (its late windows with it) and
        counted. Nothing is acquired, released or started here."""
        while True:
            await asyncio.sleep(self.cfg.renew_interval_s)
            try:
                await self.leases.heartbeat(self._info())
                renewed = await self.leases.renew(dict(self.owned))
            except _REDIS_ERRORS as exc:
                log.warning("leases not renewed while draining (%s)", type(exc).__name__)
                continue
            for sid, ok in renewed.items():
                if ok:
                    if self.metrics is not None:
                        self.metrics.lease_renewals.inc()
                else:
                    await self._lose(sid, "taken")

    async def handover(self) -> int:
        """Drain, last step (after the sinks flushed): stop renewing, release every lease
        we hold and leave the replica set. Returns the number of streams handed over."""
        if self._drain_task is not None:
            self._drain_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain_task
        n = 0
        for sid, token in list(self.owned.items()):
            try:
                if await self.leases.release(sid, token):
                    n += 1
                    if self.metrics is not None:
                        self.metrics.handovers.labels("drain").inc()
            except _REDIS_ERRORS as exc:
                log.warning("lease of %s not released (%s): it expires by itself", sid, exc)
        self.owned.clear()
        with contextlib.suppress(*_REDIS_ERRORS):
            await self.leases.unregister()
        log.info("handed over %d streams", n)
        return n

    def on_refused(self, stream_id: str, token: int) -> None:
        """The sink's callback for a write refused as stale: stop the stream now."""
        if self.owned.get(stream_id) == token:
            task = asyncio.get_running_loop().create_task(self._lose(stream_id, "refused"))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    # --- local streams of leases -----------------------------------------------------

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
            with contextlib.suppress(*_REDIS_ERRORS):
                await self.leases.release(stream_id, token)
            if self.metrics is not None:
                self.metrics.handovers.labels(reason).inc()
        log.info("stream %s handed over (%s)", stream_id, reason)

    async def _lose(self, stream_id: str, reason: str) -> None:
        """The lease is gone (or was never provably ours): stop at once, release nothing."""
        async with self._lock:
            if self.owned.pop(stream_id, None) is None:
                return
            if self.metrics is not None:  # counted with the loss, before the stop's awaits
                self.metrics.lease_losses.labels(reason).inc()
            st = self._streams.pop(stream_id, None)
            if st is not None:
                self.runner.gap(st, "lease_lost")
                await self._stop_stream(st, forget=False)
        log.warning("stream %s: lease lost (%s); stopped", stream_id, reason)

    # --- the coordination loop -------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except _REDIS_ERRORS as exc:
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
        first (:class:`~monitor.desired.DesiredSetKeeper`)."""
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
