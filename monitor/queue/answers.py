"""Answers: the result write, the notes and replies, and the acknowledgement, in one
Lua script, so that each job id is answered once.

A scoring run's answer is *fenced*: it is written only while the job id's lock
holds this attempt's token (or is free) and no result exists yet; otherwise it
is a late answer (the worker was paused or cut off past the visibility timeout
and another worker took the job over): discarded, counted in
``restrav_queue_late_answers_total`` and logged, with no second note and no
second reply. Answers that are not a scoring (an invalid payload, a dead letter)
keep a stored result and still notify their own submission.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from .. import keys
from ..redaction import redact_url
from .context import WorkerContext
from .jobs import DEAD_LETTERED, OUTCOME_DEAD, OUTCOME_DUPLICATE, WORKER_LOST, Entry, entry_ms, peek

log = logging.getLogger("restrav.queue")

REPLY_MAXLEN = 10_000

# KEYS: 1 result key, 2 results stream, 3 jobs stream, 4 errors hash, 5 lock, 6 reply stream
# ARGV: 1 body, 2 TTL s, 3 entry id, 4 group, 5 results maxlen, 6 job id, 7 ok, 8 code,
#       9 token, 10 mode (fenced | keep | none), 11 reply? (1/0), 12 reply maxlen
# returns 1 answered, 0 already answered (acknowledged), -1 another worker owns the job
_ANSWER = """
local mode = ARGV[10]
if mode == 'fenced' then
  local holder = redis.call('GET', KEYS[5])
  if holder and holder ~= ARGV[9] then return -1 end
  if not redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2], 'NX') then
    redis.pcall('XACK', KEYS[3], ARGV[4], ARGV[3])
    redis.call('HDEL', KEYS[4], ARGV[3])
    if holder then redis.call('DEL', KEYS[5]) end
    return 0
  end
elseif mode == 'keep' then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2], 'NX')
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*',
  'job_id', ARGV[6], 'entry_id', ARGV[3], 'ok', ARGV[7], 'code', ARGV[8])
if ARGV[11] == '1' then
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[12], '*', 'result', ARGV[1])
  redis.call('EXPIRE', KEYS[6], ARGV[2])
end
redis.pcall('XACK', KEYS[3], ARGV[4], ARGV[3])
redis.call('HDEL', KEYS[4], ARGV[3])
if mode == 'fenced' and redis.call('GET', KEYS[5]) == ARGV[9] then
  redis.call('DEL', KEYS[5])
end
return 1
"""

ANSWERED = 1
ALREADY_ANSWERED = 0
OWNED_ELSEWHERE = -1


class Answers:
    """Builds and writes a worker's answers."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self._answer = ctx.client.register_script(_ANSWER)

    def base(self, entry: Entry, job_id: str | None, source: str | None) -> dict[str, Any]:
        """The fields every result has."""
        return {
            "job_id": job_id,
            "entry_id": entry.id,
            "source": redact_url(source) if source else None,
            "worker": self.ctx.name,
            "attempt": entry.deliveries,
            "enqueued_at": entry_ms(entry.id) / 1000.0,
        }

    def error_result(
        self, entry: Entry, job_id: str | None, source: str | None, code: str, message: str
    ) -> dict[str, Any]:
        """An error result with reason ``code``."""
        out = self.base(entry, job_id, source)
        out.update({"ok": False, "status": "error", "error": {"code": code, "message": message}})
        return out

    def publish(
        self,
        entry: Entry,
        result: dict[str, Any],
        reply_to: str | None,
        keep_existing: bool = False,
    ) -> bool:
        """Store the result, note it on ``restrav:results``, reply, acknowledge: atomically.

        A scoring answer (``keep_existing`` false) is fenced by ``entry.token``:
        returns False, writing nothing but the acknowledgement of an answered job,
        when the job id is answered already or another worker owns it now (a late
        answer: counted and logged). ``keep_existing``: an answer that is not a
        scoring keeps any stored result and is always noted and replied.
        """
        ctx = self.ctx
        body = json.dumps(result)
        job_id = result.get("job_id") or ""
        error = result.get("error") or {}
        mode = ("keep" if keep_existing else "fenced") if job_id else "none"
        outcome = self._answer(
            keys=[
                keys.result_key(job_id),
                keys.RESULTS,
                keys.JOBS,
                keys.JOBS_ERRORS,
                keys.lock_key(job_id),
                reply_to or keys.RESULTS,
            ],
            args=[
                body,
                ctx.settings.result_ttl_s,
                entry.id,
                ctx.group,
                ctx.settings.results_maxlen,
                job_id,
                "1" if result.get("ok") else "0",
                error.get("code", ""),
                entry.token or "",
                mode,
                "1" if reply_to else "0",
                REPLY_MAXLEN,
            ],
        )
        if int(outcome) == ANSWERED:
            return True
        ctx.metrics.late_answers.inc()
        why = (
            "the job id is answered already"
            if int(outcome) == ALREADY_ANSWERED
            else "another worker took the job over"
        )
        log.warning(
            "late answer to job %s (entry %s, attempt %d) discarded: %s "
            "(this worker held it past the visibility timeout)",
            job_id,
            entry.id,
            entry.deliveries,
            why,
        )
        return False

    def duplicate(self, entry: Entry, reply_to: str | None, existing: str) -> None:
        """Answer a job id that has a result from that result, without scoring again.

        A new submission gets the stored result on its ``reply_to`` and a note
        marked ``duplicate: 1``. The same entry delivered again (its answer was
        written, the acknowledgement lost) is only acknowledged: its note and
        reply went out already.
        """
        ctx = self.ctx
        try:
            stored = json.loads(existing)
        except ValueError:
            stored = {}
        pipe = ctx.client.pipeline(transaction=False)
        if stored.get("entry_id") != entry.id:  # a new submission of an answered job id
            if reply_to:
                pipe.xadd(reply_to, {"result": existing}, maxlen=REPLY_MAXLEN, approximate=True)
                pipe.expire(reply_to, ctx.settings.result_ttl_s)
            pipe.xadd(  # the note every answer leaves, marked as a repeat of the stored result
                keys.RESULTS,
                {
                    "job_id": entry.job_id or "",
                    "entry_id": entry.id,
                    "ok": "1" if stored.get("ok") else "0",
                    "code": (stored.get("error") or {}).get("code", ""),
                    "duplicate": "1",
                },
                maxlen=ctx.settings.results_maxlen,
                approximate=True,
            )
        pipe.xack(keys.JOBS, ctx.group, entry.id)
        pipe.hdel(keys.JOBS_ERRORS, entry.id)
        pipe.execute()
        self.finish(entry, OUTCOME_DUPLICATE)

    def dead_letter(self, entry: Entry) -> None:
        """Move an entry delivered too often to the dead-letter stream; answer it."""
        ctx = self.ctx
        raw = entry.fields.get(keys.JOB_FIELD, "")
        last_raw = ctx.client.hget(keys.JOBS_ERRORS, entry.id)
        last = (
            json.loads(last_raw)
            if last_raw
            else {
                "code": WORKER_LOST,
                "message": "the worker processing it stopped without answering "
                "(crashed, was killed or hung past the visibility timeout)",
            }
        )
        deliveries = entry.deliveries - 1
        job_id, source, reply_to = peek(raw)
        ctx.client.xadd(
            keys.JOBS_DEAD,
            {
                keys.JOB_FIELD: raw,
                "entry_id": entry.id,
                "deliveries": str(deliveries),
                "last_error": json.dumps(last),
                "worker": ctx.name,
                "dead_at": f"{time.time():.3f}",
            },
            maxlen=ctx.settings.dead_maxlen,
            approximate=True,
        )
        message = (
            f"gave up after {deliveries} deliveries (queue.max_deliveries); "
            f"last error: {last.get('code')}: {last.get('message')}"
        )
        result = self.error_result(entry, job_id, source, DEAD_LETTERED, message)
        result["last_error"] = last
        self.publish(entry, result, reply_to, keep_existing=True)
        ctx.metrics.dead_lettered.inc()
        self.finish(entry, OUTCOME_DEAD, DEAD_LETTERED)
        log.warning("job %s (entry %s) dead-lettered: %s", job_id, entry.id, message)

    def finish(self, entry: Entry, outcome: str, code: str | None = None) -> None:
        """Count a finished entry."""
        ctx = self.ctx
        ctx.metrics.jobs.labels(outcome).inc()
        if code:
            ctx.metrics.errors.labels(code).inc()
        ctx.metrics.duration.labels(outcome).observe(time.monotonic() - entry.picked_at)
        with ctx.mutex:
            ctx.done += 1
