"""The worker: a read loop on the calling thread, one thread per job in flight, a
heartbeat thread, housekeeping, and a drain on stop. The parts live in
:mod:`.leases`, :mod:`.reclaim`, :mod:`.execution` and :mod:`.answers`."""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import redis

from .. import keys
from ..config import QueueSettings
from ..media.fetch import SourcePolicy
from ..metrics import QueueMetrics
from ..redis_conn import Durability
from .answers import Answers
from .backoff import Backoff
from .context import WorkerContext
from .execution import JobRunner, WorkerHooks
from .jobs import OUTCOME_RELEASED, Entry, short
from .leases import Leases, default_worker_name
from .ops import ensure_group, queue_stats, trim_jobs
from .reclaim import Fetcher
from .scoring import Scorer

log = logging.getLogger("restrav.queue")


class Worker:
    """One queue worker process: reads, scores, answers, acknowledges; reclaims and trims.

    ``scorer(path, options, shown_source)`` returns ``{"clip": ..., "aggregate": ...}``
    or raises :class:`~monitor.errors.InputError` / :class:`JobRejected`. Work runs
    in daemon threads, at most ``settings.concurrency`` at once; the calling thread
    runs the read/reclaim loop. Thread-safe Redis client required (redis-py's is).
    """

    def __init__(
        self,
        client: redis.Redis,
        settings: QueueSettings,
        scorer: Scorer,
        metrics: QueueMetrics,
        name: str | None = None,
        policy: SourcePolicy | None = None,
        max_file_bytes: int = 2 * 1024**3,
        hooks: WorkerHooks | None = None,
        durability: Durability | None = None,
    ) -> None:
        if settings.heartbeat_interval_s * 2 > settings.visibility_timeout_s:
            raise ValueError(
                "queue.heartbeat_interval_s must be at most half of queue.visibility_timeout_s"
            )
        self.ctx = WorkerContext(client, settings, metrics, name or default_worker_name(),
                                 durability=durability or Durability())
        self.client = client
        self.settings = settings
        self.metrics = metrics
        self.name = self.ctx.name
        self.group = settings.group
        self.leases = Leases(self.ctx)
        self.fetcher = Fetcher(self.ctx)
        self.answers = Answers(self.ctx)
        self.runner = JobRunner(
            self.ctx,
            self.leases,
            self.answers,
            scorer,
            policy or SourcePolicy(),
            max_file_bytes,
            hooks or WorkerHooks(),
        )
        self._threads: dict[str, threading.Thread] = {}
        self._slot_freed = threading.Event()
        self._last_tick = 0.0

    @property
    def done(self) -> int:
        """Entries finished by this worker."""
        return self.ctx.done

    def beat(self) -> None:
        """Write the heartbeat and renew the leases this worker owns."""
        self.leases.beat()

    def process(self, entry: Entry) -> None:
        """Handle one entry to the end (see :class:`~.execution.JobRunner`)."""
        self.runner.process(entry)

    # -- threads --

    def _run_entry(self, entry: Entry) -> None:
        ctx = self.ctx
        try:
            self.runner.process(entry)
        except redis.RedisError as exc:
            # not acknowledged: the entry is retried after the visibility timeout
            self.metrics.redis_errors.inc()
            log.warning("redis error on entry %s: %s", entry.id, exc)
        finally:
            with ctx.mutex:
                ctx.inflight.pop(entry.id, None)
                self._threads.pop(entry.id, None)
                self.metrics.in_progress.set(len(ctx.inflight))
            self._slot_freed.set()

    def _start(self, entry: Entry) -> None:
        ctx = self.ctx
        thread = threading.Thread(
            target=self._run_entry, args=(entry,), name=f"job-{entry.id}", daemon=True
        )
        with ctx.mutex:
            if entry.id in ctx.inflight:
                return  # reclaimed from ourselves (a late lease renewal): already running
            ctx.inflight[entry.id] = entry
            self._threads[entry.id] = thread
            self.metrics.in_progress.set(len(ctx.inflight))
        thread.start()

    def _free_slots(self) -> int:
        with self.ctx.mutex:
            return self.settings.concurrency - len(self.ctx.inflight)

    # -- housekeeping --

    def _maybe_tick(self) -> None:
        now = time.monotonic()
        if now - self._last_tick >= self.settings.reclaim_interval_s:
            self._last_tick = now
            self._tick()

    def _tick(self) -> None:
        """Periodic housekeeping: queue gauges and trimming."""
        stats = queue_stats(self.client, self.group)
        self.metrics.lag.set(stats.lag)
        self.metrics.pending.set(stats.pending)
        self.metrics.oldest_pending_age.set(stats.oldest_pending_age_s)
        self.metrics.group_missing.set(0 if stats.group_exists else 1)
        trim_jobs(self.client)

    def _loop_failed(self, exc: redis.RedisError) -> None:
        ctx = self.ctx
        self.metrics.redis_errors.inc()
        self.metrics.loop_failing.set(1)
        if ctx.failing_since is None:
            ctx.failing_since = time.time()
        ctx.last_error = short(exc, 200)
        log.warning("redis error in the worker loop: %s (retrying)", exc)

    def _loop_ok(self) -> None:
        if self.ctx.failing_since is not None:
            log.info("worker loop works again")
        self.ctx.failing_since = None
        self.ctx.last_error = None
        self.metrics.loop_failing.set(0)

    # -- the loop --

    def run(self, stop: threading.Event) -> None:
        """Work until ``stop`` is set, then drain (``shutdown_grace_s``) and release the rest."""
        ensure_group(self.client, self.group)
        self.leases.beat()
        beater = threading.Thread(target=self.leases.loop, name="heartbeat", daemon=True)
        beater.start()
        backoff = Backoff()
        log.info("worker %s reading %s in group %s", self.name, keys.JOBS, self.group)
        try:
            while not stop.is_set():
                self.ctx.loop_at = time.time()
                try:
                    self._maybe_tick()
                except redis.RedisError as exc:
                    self.metrics.redis_errors.inc()
                    log.warning("redis error in housekeeping: %s", exc)
                free = self._free_slots()
                if free <= 0:
                    self._slot_freed.wait(0.5)
                    self._slot_freed.clear()
                    continue
                try:
                    entries = self.fetcher.fetch(free, block=True)
                except redis.RedisError as exc:
                    self._loop_failed(exc)
                    stop.wait(backoff.next_s())
                    continue
                backoff.reset()
                self._loop_ok()
                for entry in entries:
                    self._start(entry)
        finally:
            self._drain()
            self.leases.stop.set()
            beater.join(timeout=5)
            with contextlib.suppress(redis.RedisError):
                self.client.delete(keys.heartbeat_key(self.name))

    def _drain(self) -> None:
        ctx = self.ctx
        deadline = time.monotonic() + self.settings.shutdown_grace_s
        while time.monotonic() < deadline:
            with ctx.mutex:
                threads = list(self._threads.values())
            if not threads:
                return
            threads[0].join(timeout=max(0.0, deadline - time.monotonic()))
        with ctx.mutex:
            left = list(ctx.inflight.values())
            ctx.released.update(e.id for e in left)
        if left:
            # make them reclaimable at once instead of after the visibility timeout
            # and give the delivery back: a release is not a failed attempt
            try:
                pipe = self.client.pipeline(transaction=False)
                for e in left:
                    pipe.xclaim(
                        keys.JOBS,
                        self.group,
                        self.name,
                        0,
                        [e.id],
                        idle=ctx.visibility_ms,
                        retrycount=max(0, e.deliveries - 1),
                        justid=True,
                    )
                    if e.job_id is not None and e.token is not None:
                        self.leases.release(e.job_id, e.token, client=pipe)
                pipe.execute()
            except redis.RedisError as exc:
                log.warning("could not release %d job(s): %s", len(left), exc)
            for e in left:
                self.answers.finish(e, OUTCOME_RELEASED)
            log.warning("released %d unfinished job(s) for other workers", len(left))

    @property
    def busy(self) -> bool:
        """True while a job's thread is still running (after :meth:`run` returned: a job
        released at the grace deadline whose scoring has not come back yet)."""
        with self.ctx.mutex:
            return any(t.is_alive() for t in self._threads.values())

    @property
    def inflight(self) -> list[str]:
        """Entry ids being worked on now."""
        with self.ctx.mutex:
            return list(self.ctx.inflight)
