"""Live streams shared by many `restrav serve` replicas: leases, assignment, handover.

Contract (``serve.cluster.enabled``; Redis is the system of record):

* The desired set (``restrav:streams``) is shared: the control API of any
  replica edits it, and every replica reads it back on each tick. A stream
  runs only on the replica holding its lease (:mod:`monitor.cluster.leases`), started
  with the lease's fencing token; its scores, ``latest`` and events carry the
  token and Redis refuses them once the token is stale (:mod:`monitor.live.sinks.fenced`).
* Every ``renew_interval_s`` the replica's tick (:mod:`monitor.cluster.coordination`): renews
  its heartbeat and leases (a lease not renewed means the stream stops at
  once: the window ends, no window spans an ownership change), applies edits
  of the desired set to the streams it owns, then follows its part of the
  :func:`monitor.cluster.assignment.plan`: releases streams above its fair share
  (bounded per interval) and acquires unowned streams assigned to it. A stream
  unowned for three ticks in a row is taken by any replica with free capacity
  (the planned one may be stuck). On acquisition ``seq`` continues after the
  newest stored score, so the owners' ``seq`` ranges never overlap.
* When Redis cannot be reached for a whole lease TTL the replica stops every
  stream it owned (it can no longer prove ownership) and acquires again later.
* Redis losing its data (a restart without persistence) is not read as "every
  stream removed": :class:`~monitor.live.desired.DesiredSetKeeper` writes back the set
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
import logging
import time

from .. import keys
from ..config import StreamSpec
from ..errors import InputError, RestravError
from ..live.desired import record_for
from ..live.sinks import RedisSink
from ..live.stream_state import StreamStatus
from ..media.sources import kind_for
from ..redaction import redact_url
from ..redis_faults import cancel_and_wait
from .coordination import ORPHAN_TICKS, REDIS_ERRORS, LeaseCoordination

log = logging.getLogger("restrav.cluster")

__all__ = ["ORPHAN_TICKS", "ClusteredStreamManager", "DesiredSetUnavailable"]


class DesiredSetUnavailable(RestravError):
    """The shared desired set cannot be edited now (Redis unreachable); retry later."""

    code = "redis_unavailable"


class ClusteredStreamManager(LeaseCoordination):
    """A :class:`~monitor.live.service.StreamManager` that runs only the streams it leases
    (:class:`~monitor.cluster.coordination.LeaseCoordination`), with the control surface of
    the shared desired set: queries over every stream wherever it runs, edits, and
    the drain's two steps."""

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

    async def _store_put(self, spec: StreamSpec) -> None:
        record = record_for(spec)
        try:
            await self.desired_store.put(spec.id, record)
        except REDIS_ERRORS as exc:
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
        except REDIS_ERRORS as exc:
            raise DesiredSetUnavailable(
                f"the desired set in Redis is unreachable ({type(exc).__name__}); retry later"
            ) from exc
        self._desired.pop(stream_id, None)
        self.keeper.forget(stream_id)
        async with self._lock:
            if stream_id in self.owned:
                await self._give_up(stream_id, "removed", forget=True)
        with contextlib.suppress(*REDIS_ERRORS):
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
        except REDIS_ERRORS as exc:
            log.warning("config streams not added to the desired set yet (%s)", exc)
        self._desired = desired
        self._loop_task = asyncio.create_task(self._loop(), name="cluster-coordinator")
        self.restored = True

    async def stop(self) -> None:
        """Drain, first step: draining in the heartbeat, coordination stops, every
        stream stops; the leases are kept, and renewed, until :meth:`handover`."""
        self._draining = True
        if self._loop_task is not None:
            await cancel_and_wait(self._loop_task)
        with contextlib.suppress(*REDIS_ERRORS):
            await self.leases.heartbeat(self._info())
        self._drain_task = asyncio.create_task(self._keep_leases(), name="cluster-drain-leases")
        await super().stop()

    async def handover(self) -> int:
        """Drain, last step (after the sinks flushed): stop renewing, release every lease
        we hold and leave the replica set. Returns the number of streams handed over."""
        if self._drain_task is not None:
            await cancel_and_wait(self._drain_task)
        n = 0
        for sid, token in list(self.owned.items()):
            self._ended(sid, token)
            try:
                if await self.leases.release(sid, token):
                    n += 1
                    if self.metrics is not None:
                        self.metrics.handovers.labels("drain").inc()
            except REDIS_ERRORS as exc:
                log.warning("lease of %s not released (%s): it expires by itself", sid, exc)
        self.owned.clear()
        with contextlib.suppress(*REDIS_ERRORS):
            await self.leases.unregister()
        log.info("handed over %d streams", n)
        return n

    def bind_sink(self, sink: RedisSink) -> None:
        """Wire the fenced Redis sink to this replica's leases: a refused write stops the
        stream (:meth:`on_refused`); writes whose lease lapsed wait up to one lease TTL
        for its renewal, and none for a lease this replica let go."""
        sink.on_refused = self.on_refused
        sink.lapse_grace_s = self.cfg.lease_ttl_s
        self.on_released = sink.released

    def on_refused(self, stream_id: str, token: int) -> None:
        """The sink's callback for a write refused as stale: stop the stream now."""
        if self.owned.get(stream_id) == token:
            task = asyncio.get_running_loop().create_task(self._lose(stream_id, "refused"))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

