"""The desired set of live streams: where it is kept, and how changes reach it.

Contract:

* The desired set is every stream the operators asked for (specs with
  credentials stripped, the ``paused`` flag). With Redis it is the hash
  ``restrav:streams`` (id -> JSON), the system of record shared by every
  ``restrav serve`` replica; the control API on any replica edits it.
* Replicas (:mod:`monitor.cluster.manager`) also keep a mark in the hash, the field
  ``~set`` (:data:`monitor.keys.STREAMS_DESIRED_MARK`; no stream id can take
  it): edits never delete it, so removing every stream leaves the mark, and the
  hash vanishing with its mark means Redis lost its data, not that the operators
  removed everything. :meth:`RedisDesiredStore.load` never returns the mark.
* :func:`record_for` is the stored form of a spec: the URL without user info,
  and ``inline_credentials: true`` when it had some (never stored).
* :class:`DesiredSetWriter` writes every change; when the store is down it
  never fails the caller: it marks the set dirty and rewrites the whole set
  (from a snapshot callback) with backoff until the store takes it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

from .. import keys
from ..config import StreamSpec
from ..redis_faults import cancel_and_wait
from .stream_state import strip_credentials

log = logging.getLogger("restrav.streams")


class DesiredStore(Protocol):
    """Where the desired set of streams is kept (Redis in production)."""

    async def load(self) -> list[dict[str, Any]]:
        """Every stored spec (as JSON objects)."""
        ...

    async def put(self, stream_id: str, record: dict[str, Any]) -> None:
        """Store or replace one spec."""
        ...

    async def delete(self, stream_id: str) -> None:
        """Forget one spec."""
        ...


class RedisDesiredStore:
    """The desired set as a Redis hash ``restrav:streams`` (id -> JSON)."""

    def __init__(self, client: Any, key: str = keys.STREAMS_DESIRED) -> None:
        self.client = client
        self.key = key

    async def load(self) -> list[dict[str, Any]]:
        """Every stored record; unreadable entries are skipped with a warning."""
        records, _ = await self.load_marked()
        return list(records.values())

    async def load_marked(self) -> tuple[dict[str, dict[str, Any]], bool]:
        """Every stored record by its field (stream id), and whether the mark is there."""
        raw: dict[Any, Any] = await self.client.hgetall(self.key)
        out: dict[str, dict[str, Any]] = {}
        marked = False
        for k, v in raw.items():
            field = k.decode() if isinstance(k, bytes) else str(k)
            if field == keys.STREAMS_DESIRED_MARK:
                marked = True
                continue
            try:
                rec = json.loads(v)
            except ValueError:
                log.warning("desired set: unreadable entry %r skipped", k)
                continue
            if isinstance(rec, dict):
                out[field] = rec
        return out, marked

    async def mark(self) -> None:
        """Set the mark (the hash is followed by replicas from now on)."""
        await self.client.hset(self.key, keys.STREAMS_DESIRED_MARK, "1")

    async def write_back(self, records: dict[str, dict[str, Any]]) -> int:
        """After a data loss: HSETNX every record (an edit made since wins; several
        replicas writing back at once agree) and set the mark, in one MULTI/EXEC.
        Returns the number of records written (those that were missing)."""
        async with self.client.pipeline(transaction=True) as pipe:
            for field, rec in records.items():
                pipe.hsetnx(self.key, field, json.dumps(rec, sort_keys=True))
            pipe.hset(self.key, keys.STREAMS_DESIRED_MARK, "1")
            res = await pipe.execute()
        return sum(int(r) for r in res[:-1])

    async def put(self, stream_id: str, record: dict[str, Any]) -> None:
        """HSET one record."""
        await self.client.hset(self.key, stream_id, json.dumps(record, sort_keys=True))

    async def delete(self, stream_id: str) -> None:
        """HDEL one record."""
        await self.client.hdel(self.key, stream_id)


class DesiredSetKeeper:
    """Reads the shared desired set for a replica, and puts it back after Redis lost it.

    The hash keeps a mark (:data:`monitor.keys.STREAMS_DESIRED_MARK`) that edits never
    delete. :meth:`load` remembers every set it read with its mark; finding the mark
    gone later means Redis lost its data (operators removing every stream keep it), so
    the set last known is written back (HSETNX: edits made since win; replicas doing it
    at once agree), ``on_restored`` is called and an ERROR logged. A set never seen
    marked (a first start, an older version's hash) is marked after two reads in a
    row without it, which leaves a replica that knew the set time to write it back
    first. The replica's own edits go through :meth:`remember` / :meth:`forget`, so
    what is written back is what it last wrote too.
    """

    def __init__(self, store: RedisDesiredStore,
                 on_restored: Callable[[], None] | None = None) -> None:
        self.store = store
        self.on_restored = on_restored
        self._known: dict[str, dict[str, Any]] | None = None  # last set seen marked
        self._unmarked_reads = 0

    def remember(self, stream_id: str, record: dict[str, Any]) -> None:
        """This replica wrote ``record``."""
        if self._known is not None:
            self._known[stream_id] = record

    def forget(self, stream_id: str) -> None:
        """This replica deleted ``stream_id``."""
        if self._known is not None:
            self._known.pop(stream_id, None)

    async def load(self) -> dict[str, dict[str, Any]]:
        """Every stored record by stream id, written back first after a data loss.
        Redis errors propagate: an outage must not read as "every stream was removed"."""
        records, marked = await self.store.load_marked()
        if not marked and self._known is not None:
            written = await self.store.write_back(self._known)
            if self.on_restored is not None:
                self.on_restored()
            log.error("the desired set lost its mark in Redis (Redis lost its data?): wrote "
                      "back the %d streams this replica last knew (%d were missing)",
                      len(self._known), written)
            records, marked = await self.store.load_marked()
        elif not marked:
            self._unmarked_reads += 1
            if records and self._unmarked_reads >= 2:
                await self.store.mark()
                marked = True
        if marked:
            self._known = dict(records)
            self._unmarked_reads = 0
        return records


def record_for(spec: StreamSpec) -> dict[str, Any]:
    """The stored form of ``spec`` (no credentials; see the module docstring)."""
    url, had = strip_credentials(spec.url)
    rec = spec.model_dump()
    rec["url"] = url
    if had:
        rec["inline_credentials"] = True
    return rec


def spec_from_record(rec: dict[str, Any]) -> tuple[StreamSpec, bool]:
    """A stored record back as a spec, and whether its inline credentials were lost.

    Raises ValueError (pydantic) for an invalid record."""
    rec = dict(rec)
    lost = bool(rec.pop("inline_credentials", False))
    return StreamSpec(**rec), lost


class DesiredSetWriter:
    """Writes desired-set changes to a store, resyncing after an outage."""

    def __init__(
        self,
        store: DesiredStore | None,
        enabled: bool,
        snapshot: Callable[[], dict[str, StreamSpec]],
    ) -> None:
        self.store = store
        self.enabled = enabled and store is not None
        self.snapshot = snapshot
        self._dirty = False
        self._sync_task: asyncio.Task[None] | None = None

    async def put(self, spec: StreamSpec) -> None:
        """Store one spec; on a store error, resync later (never raises)."""
        if not self.enabled or self.store is None:
            return
        try:
            await self.store.put(spec.id, record_for(spec))
        except Exception as exc:  # noqa: BLE001 - store outage: resync later, never fail the call
            log.warning("desired set not saved (%s); will retry", type(exc).__name__)
            self._mark_dirty()

    async def delete(self, stream_id: str) -> None:
        """Forget one spec; on a store error, resync later (never raises)."""
        if not self.enabled or self.store is None:
            return
        try:
            await self.store.delete(stream_id)
        except Exception as exc:  # noqa: BLE001 - store outage: resync later, never fail the call
            log.warning("desired set not saved (%s); will retry", type(exc).__name__)
            self._mark_dirty()

    def _mark_dirty(self) -> None:
        self._dirty = True
        if self._sync_task is None or self._sync_task.done():
            self._sync_task = asyncio.create_task(self._resync(), name="desired-set-sync")

    async def _resync(self) -> None:
        """Rewrite the whole desired set until the store takes it."""
        assert self.store is not None
        delay = 0.5
        while self._dirty:
            await asyncio.sleep(delay)
            try:
                stored = {r.get("id") for r in await self.store.load()}
                current = self.snapshot()
                for sid in stored - set(current):
                    if isinstance(sid, str):
                        await self.store.delete(sid)
                for sid, spec in current.items():
                    await self.store.put(sid, record_for(spec))
                self._dirty = False
                log.info("desired set saved")
            except Exception:  # noqa: BLE001 - store still down: try again later
                delay = min(10.0, delay * 2)

    async def aclose(self) -> None:
        """Stop a pending resync."""
        if self._sync_task is not None:
            await cancel_and_wait(self._sync_task)
