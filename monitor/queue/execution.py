"""Running one job: validate the payload, answer duplicates, dead-letter what was
delivered too often, take the job id's lock, fetch and score the source, answer.

Bad input is an answer with a reason code. An unexpected exception (a bug) is
recorded as the entry's last error and the entry is left unacknowledged, to be
retried and, after ``max_deliveries``, dead-lettered with that error. An answer
that cannot be written because Redis is unreachable or refuses writes (OOM,
READONLY...) is retried (with backoff) for a while: the fenced write makes a late
one harmless.

An entry whose job id is locked by another entry (a producer submitted the job
twice; the other entry is being scored, here or by another worker) waits: it is
left pending without counting the delivery, delivered again after the visibility
timeout, and then answered from the stored result. It is never dead-lettered
while the lock is held, i.e. renewed by a live owner.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from pydantic import ValidationError

from .. import keys
from ..errors import InputError
from ..media.fetch import SourcePolicy, local_source
from ..redaction import redact_url
from ..redis_conn import rediscover
from ..redis_faults import NotReplicated, redis_unavailable
from .answers import Answers
from .backoff import Backoff
from .context import WorkerContext
from .jobs import (
    INTERNAL,
    INVALID_JOB,
    MAX_JOB_BYTES,
    OUTCOME_ERROR,
    OUTCOME_SCORED,
    Entry,
    Job,
    JobRejected,
    peek,
    short,
)
from .leases import Leases
from .scoring import Scorer

log = logging.getLogger("restrav.queue")


@dataclass
class WorkerHooks:
    """Test seams (off by default; the CLI enables them only under RESTRAV_TESTING=1)."""

    before_score: Callable[[Job, int], None] | None = None
    """Called with the job and its delivery number just before its source is fetched."""


class JobRunner:
    """Handles one entry to the end: answered and acknowledged, or left for a retry."""

    def __init__(
        self,
        ctx: WorkerContext,
        leases: Leases,
        answers: Answers,
        scorer: Scorer,
        policy: SourcePolicy,
        max_file_bytes: int,
        hooks: WorkerHooks,
    ) -> None:
        self.ctx = ctx
        self.leases = leases
        self.answers = answers
        self.scorer = scorer
        self.policy = policy
        self.max_file_bytes = max_file_bytes
        self.hooks = hooks

    def process(self, entry: Entry) -> None:
        """Handle ``entry``: answer it and acknowledge it, or leave it pending."""
        ctx, answers = self.ctx, self.answers
        if not entry.fields:
            # the entry was deleted (XDEL) while pending: nothing to do but acknowledge
            ctx.client.xack(keys.JOBS, ctx.group, entry.id)
            answers.finish(entry, OUTCOME_ERROR, INVALID_JOB)
            return
        raw = entry.fields.get(keys.JOB_FIELD)
        try:
            if raw is None:
                raise ValueError(f"the entry has no {keys.JOB_FIELD!r} field")
            if len(raw) > MAX_JOB_BYTES:
                raise ValueError(f"job JSON over {MAX_JOB_BYTES} bytes")
            job = Job.model_validate_json(raw)
        except (ValidationError, ValueError) as exc:
            job_id, source, reply_to = peek(raw or "")
            message = f"invalid job: {short(exc)}"
            answers.reject(
                entry, answers.error_result(entry, job_id, source, INVALID_JOB, message), reply_to
            )
            answers.finish(entry, OUTCOME_ERROR, INVALID_JOB)
            return
        entry.job_id = job.job_id

        existing: Any = ctx.client.get(keys.result_key(job.job_id))
        if existing is not None:
            answers.duplicate(entry, job.reply_to, existing)
            return
        if entry.deliveries > ctx.settings.max_deliveries:
            if not answers.dead_letter(entry):
                self._wait(entry)
            return
        token = self.leases.take(job.job_id)
        if token is None:
            self._wait(entry)
            return
        entry.token = token
        ctx.client.incr(keys.runs_key(job.job_id))
        ctx.client.expire(keys.runs_key(job.job_id), ctx.settings.result_ttl_s)
        if self.hooks.before_score is not None:
            self.hooks.before_score(job, entry.deliveries)
        self._score_and_answer(entry, job)

    def _wait(self, entry: Entry) -> None:
        """Leave an entry whose job id another entry holds pending, the delivery not
        counted: it comes back after the visibility timeout, to be answered from the
        stored result then (or scored, if the owner died without answering)."""
        self.leases.give_back(entry)
        log.info(
            "job %s is being scored under another entry; entry %s waits", entry.job_id, entry.id
        )

    def _score_and_answer(self, entry: Entry, job: Job) -> None:
        ctx, answers = self.ctx, self.answers
        shown = redact_url(job.source)
        started = time.time()
        try:
            with local_source(job.source, self.policy, self.max_file_bytes) as path:
                scored = self.scorer(path, job.options, job.source)
            result = answers.base(entry, job.job_id, job.source)
            result.update({"ok": True, "status": "scored", "error": None})
            result["options"] = job.options.model_dump()
            result.update(scored)
            outcome, code = OUTCOME_SCORED, None
        except (InputError, JobRejected) as exc:
            message = exc.message.replace(str(job.source), shown)
            result = answers.error_result(entry, job.job_id, job.source, exc.code, message)
            outcome, code = OUTCOME_ERROR, exc.code
        except Exception as exc:  # job runner boundary (sanctioned): a bug must not stop the worker
            log.exception("internal error on job %s (entry %s)", job.job_id, entry.id)
            ctx.metrics.errors.labels(INTERNAL).inc()
            ctx.client.hset(
                keys.JOBS_ERRORS,
                entry.id,
                json.dumps({"code": INTERNAL, "message": f"{type(exc).__name__}: {short(exc)}"}),
            )
            if entry.token is not None:
                self.leases.release(job.job_id, entry.token)
            return  # not acknowledged: retried after the visibility timeout, then dead-lettered
        with ctx.mutex:
            if entry.id in ctx.released:
                # handed back at shutdown: another worker owns it now, do not answer twice
                log.info("entry %s finished after it was released; result dropped", entry.id)
                return
        result["started_at"] = started
        result["finished_at"] = time.time()
        result["duration_s"] = result["finished_at"] - started
        if self._publish_retrying(entry, result, job.reply_to):
            answers.finish(entry, outcome, code)

    def _publish_retrying(self, entry: Entry, result: dict[str, Any], reply_to: str | None) -> bool:
        """Publish, retrying while Redis is unreachable or refuses writes (see
        :func:`~monitor.redis_faults.redis_unavailable`), for up to four visibility
        timeouts (at least 30 s): a result computed is not thrown away for a short
        outage. Other errors are raised at once."""
        deadline = time.monotonic() + max(30.0, 4 * self.ctx.settings.visibility_timeout_s)
        backoff = Backoff(first_s=0.2, max_s=5.0)
        while True:
            try:
                return self.answers.publish(entry, result, reply_to)
            except redis.RedisError as exc:
                if not redis_unavailable(exc):
                    raise
                if isinstance(exc, NotReplicated):  # maybe a deposed primary: ask again
                    rediscover(self.ctx.client)
                self.ctx.metrics.redis_errors.inc()
                if time.monotonic() >= deadline:
                    raise
                log.warning("could not answer job %s yet: %s (retrying)", entry.job_id, exc)
                time.sleep(backoff.next_s())
