"""Which entries a worker takes next: its own pending ones first (after a restart),
then entries whose lease expired (``XAUTOCLAIM``), then new ones (``XREADGROUP >``).

A missing consumer group (``NOGROUP``: Redis restarted without its data) is
recreated here, logged and counted, instead of failing every read.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from .. import keys
from .context import WorkerContext
from .jobs import Entry
from .ops import ensure_group, is_nogroup

log = logging.getLogger("restrav.queue")


class Fetcher:
    """Reads entries for one worker, at most as many as it has free slots."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self._own_cursor: str | None = "0"
        self._reclaim_cursor = "0-0"
        self._last_reclaim = 0.0

    def deliveries(self, entry_id: str) -> int:
        """How many times the group delivered ``entry_id`` (1 when not pending)."""
        ctx = self.ctx
        rows = ctx.client.xpending_range(keys.JOBS, ctx.group, entry_id, entry_id, 1)
        return int(rows[0]["times_delivered"]) if rows else 1

    def fetch(self, count: int, block: bool) -> list[Entry]:
        """Up to ``count`` entries: own pending first, then reclaimed, then new ones.

        Recreates a missing consumer group (and returns nothing this time)."""
        try:
            return self._fetch(count, block)
        except redis.ResponseError as exc:
            if not is_nogroup(exc):
                raise
            self.recreate_group(str(exc))
            return []

    def recreate_group(self, why: str) -> None:
        """Create the consumer group again; restart the cursors from the beginning."""
        ctx = self.ctx
        ensure_group(ctx.client, ctx.group)
        self._own_cursor = None  # the old pending entries are gone with the group
        self._reclaim_cursor = "0-0"
        ctx.metrics.group_recreated.inc()
        log.error(
            "consumer group %r of %s was missing (%s): Redis restarted without its data or "
            "the group was deleted; recreated it, reading the stream from its start. "
            "Jobs that were pending then may be answered again or lost.",
            ctx.group,
            keys.JOBS,
            why,
        )

    def _fetch(self, count: int, block: bool) -> list[Entry]:
        ctx = self.ctx
        if self._own_cursor is not None:
            own: Any = ctx.client.xreadgroup(
                ctx.group, ctx.name, {keys.JOBS: self._own_cursor}, count=count
            )
            rows: list[Any] = own[0][1] if own else []
            if rows:
                self._own_cursor = rows[-1][0]
                return [Entry(i, f or {}, self.deliveries(i)) for i, f in rows]
            self._own_cursor = None
        now = time.monotonic()
        if now - self._last_reclaim >= ctx.settings.reclaim_interval_s:
            self._last_reclaim = now
            auto: Any = ctx.client.xautoclaim(
                keys.JOBS,
                ctx.group,
                ctx.name,
                ctx.visibility_ms,
                start_id=self._reclaim_cursor,
                count=count,
            )
            cursor, claimed = auto[0], auto[1]
            # the cursor walks the PEL; 0-0 means it went round, so start over next time
            self._reclaim_cursor = str(cursor)
            if claimed:
                ctx.metrics.reclaimed.inc(len(claimed))
                log.info("reclaimed %d job(s) from stalled workers", len(claimed))
                return [Entry(i, f or {}, self.deliveries(i)) for i, f in claimed]
        new: Any = ctx.client.xreadgroup(
            ctx.group,
            ctx.name,
            {keys.JOBS: ">"},
            count=count,
            block=ctx.settings.block_ms if block else None,
        )
        fresh: list[Any] = new[0][1] if new else []
        return [Entry(i, f or {}, 1) for i, f in fresh]
