"""Answers: the result write, the notes and replies, and the acknowledgement, in one
Lua script per answer, so that each job id is answered once.

A scoring run's answer is *fenced*: it is written only while the job id's lock
holds this attempt's token (or is free) and no result exists yet; otherwise it
is a late answer (the worker was paused or cut off past the visibility timeout
and another worker took the job over): discarded, counted in
``restrav_queue_late_answers_total`` and logged, with no second note and no
second reply. A dead letter is written only while the job id is unlocked and
unanswered: a job that a live worker is scoring under another entry (a
producer's retry) is never dead-lettered, and a job answered meanwhile answers
the dead entry from its stored result. An invalid payload never replaces a
stored result nor one being computed, and still notifies its own submission.

A new submission of an answered job id gets the stored result again (note marked
``duplicate: 1``); the same entry delivered again is only acknowledged. Each of
these writes is one script: a crash leaves all of it or none.

On Redis Cluster these keys live in several slots and one script may touch one
(:mod:`.answer_scripts`): the decision and the result are one script in the job id's
slot, which also records the notes still to write (reply, note, dead letter) under
:func:`monitor.keys.notes_key`; the notes follow one key at a time (each with its
``WAIT`` when durability is on), then the record is deleted and the entry
acknowledged. One result per job id and the fencing are kept (they live in the
job id's slot); the notes are written at least once: a worker that dies between a
note and the deletion of the record writes that note again on the entry's next
delivery, and an entry without a valid job id is noted again when delivered again.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from .. import keys
from ..redaction import redact_url
from ..redis_conn import is_cluster, key_pipeline, run_key_pipeline
from .answer_scripts import ANSWER, ANSWER_IN_SLOT, DUPLICATE
from .context import WorkerContext
from .jobs import DEAD_LETTERED, OUTCOME_DEAD, OUTCOME_DUPLICATE, WORKER_LOST, Entry, entry_ms, peek
from .notes import REPLY_MAXLEN, Notes

log = logging.getLogger("restrav.queue")


ANSWERED = 1
ALREADY_ANSWERED = 0
OWNED_ELSEWHERE = -1
ANSWERED_BEFORE = 2
"""This attempt's own answer, written by an earlier try (its replication unconfirmed)."""



class Answers:
    """Builds and writes a worker's answers."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self._answer = ctx.client.register_script(ANSWER)
        self._duplicate = ctx.client.register_script(DUPLICATE)
        self._in_slot = ctx.client.register_script(ANSWER_IN_SLOT)
        self.cluster = is_cluster(ctx.client)
        self.notes = Notes(ctx)

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

    def _write(
        self,
        entry: Entry,
        result: dict[str, Any],
        reply_to: str | None,
        mode: str,
        dead: list[str] | None = None,
    ) -> int:
        """Run the answer script; return ANSWERED, ALREADY_ANSWERED, OWNED_ELSEWHERE or
        ANSWERED_BEFORE. With ``ctx.durability`` on, a ``WAIT`` follows the script on
        the same connection, and an answer the replicas did not acknowledge raises
        :class:`~monitor.redis_faults.NotReplicated` (not done: the caller tries again
        with the same body, which a surviving first write answers with ANSWERED_BEFORE,
        or the entry stays unacknowledged and is delivered again)."""
        ctx = self.ctx
        body = json.dumps(result)
        job_id = result.get("job_id") or ""
        error = result.get("error") or {}
        if self.cluster:
            return self._write_in_steps(entry, body, job_id, reply_to, mode, dead)
        pipe = ctx.client.pipeline(transaction=False)
        self._answer(
            client=pipe,
            keys=[
                keys.result_key(job_id),
                keys.RESULTS,
                keys.JOBS,
                keys.JOBS_ERRORS,
                keys.lock_key(job_id),
                reply_to or keys.RESULTS,
                keys.JOBS_DEAD,
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
                mode if job_id else "none",
                "1" if reply_to else "0",
                REPLY_MAXLEN,
                ctx.settings.dead_maxlen,
                *(dead or []),
            ],
        )
        waits = ctx.durability.queue_wait(pipe)
        replies = pipe.execute()
        outcome = int(replies[0])
        if waits and outcome in (ANSWERED, ANSWERED_BEFORE):
            ctx.durability.check(replies[1], f"answer to job {job_id or entry.id}")
        return outcome

    def _write_in_steps(
        self, entry: Entry, body: str, job_id: str, reply_to: str | None, mode: str,
        dead: list[str] | None,
    ) -> int:
        """:meth:`_write` on Redis Cluster (the module docstring): the script in the job
        id's slot, then the notes it recorded, then the acknowledgement."""
        ctx = self.ctx
        stored = json.loads(body)
        notes = {
            "reply_to": reply_to,
            "result": body if reply_to else None,
            "note": Notes.fields(job_id, entry.id, stored),
            "dead": dead,
        }
        if not job_id:  # nothing to fence or store: notes and acknowledgement only
            self.notes.write(notes)
            self.notes.acknowledge(entry)
            return ANSWERED
        pipe = key_pipeline(ctx.client, keys.result_key(job_id))
        self._in_slot(
            keys=[keys.result_key(job_id), keys.lock_key(job_id), keys.notes_key(job_id)],
            args=[body, ctx.settings.result_ttl_s, entry.token or "", mode, json.dumps(notes)],
            client=pipe,
        )
        waits = ctx.durability.queue_wait(pipe)
        replies = run_key_pipeline(ctx.client, pipe)
        outcome = int(replies[0])
        if waits and outcome in (ANSWERED, ANSWERED_BEFORE):
            ctx.durability.check(replies[1], f"answer to job {job_id}")
        if outcome in (ANSWERED, ANSWERED_BEFORE):
            # a try before this one may have written some notes already
            self.notes.flush(job_id, again=outcome == ANSWERED_BEFORE)
        if outcome in (ANSWERED, ANSWERED_BEFORE) or (
            mode == "fenced" and outcome == ALREADY_ANSWERED
        ):
            self.notes.acknowledge(entry)
        return outcome

    def publish(self, entry: Entry, result: dict[str, Any], reply_to: str | None) -> bool:
        """Store a scoring's result, note it on ``restrav:results``, reply, acknowledge:
        atomically, fenced by ``entry.token``.

        Returns False, writing nothing but the acknowledgement of an answered job,
        when the job id is answered already or another worker owns it now (a late
        answer: counted and logged).
        """
        outcome = self._write(entry, result, reply_to, "fenced")
        if outcome in (ANSWERED, ANSWERED_BEFORE):
            return True
        self.ctx.metrics.late_answers.inc()
        why = (
            "the job id is answered already"
            if outcome == ALREADY_ANSWERED
            else "another worker took the job over"
        )
        log.warning(
            "late answer to job %s (entry %s, attempt %d) discarded: %s "
            "(this worker held it past the visibility timeout)",
            result.get("job_id"),
            entry.id,
            entry.deliveries,
            why,
        )
        return False

    def reject(self, entry: Entry, result: dict[str, Any], reply_to: str | None) -> None:
        """Answer an invalid payload: note, reply and acknowledge; store ``result``
        only when its job id has no result and is not locked (being scored)."""
        self._write(entry, result, reply_to, "keep")

    def duplicate(self, entry: Entry, reply_to: str | None, existing: str) -> None:
        """Answer a job id that has a result from that result, without scoring again.

        A new submission gets the stored result on its ``reply_to`` and a note
        marked ``duplicate: 1``. The same entry delivered again (its answer was
        written, the acknowledgement lost) is only acknowledged: its note and
        reply went out already. Replies, note and acknowledgement are one script.
        """
        ctx = self.ctx
        try:
            stored = json.loads(existing)
        except ValueError:
            stored = {}
        if not isinstance(stored, dict):
            stored = {}
        if self.cluster:
            self._duplicate_in_steps(entry, reply_to, existing, stored)
            self.finish(entry, OUTCOME_DUPLICATE)
            return
        self._duplicate(
            keys=[keys.RESULTS, keys.JOBS, keys.JOBS_ERRORS, reply_to or keys.RESULTS],
            args=[
                existing,
                ctx.settings.result_ttl_s,
                entry.id,
                ctx.group,
                ctx.settings.results_maxlen,
                entry.job_id or "",
                "1" if stored.get("ok") else "0",
                (stored.get("error") or {}).get("code", ""),
                "0" if stored.get("entry_id") == entry.id else "1",
                "1" if reply_to else "0",
                REPLY_MAXLEN,
            ],
        )
        self.finish(entry, OUTCOME_DUPLICATE)

    def _duplicate_in_steps(
        self, entry: Entry, reply_to: str | None, existing: str, stored: dict[str, Any]
    ) -> None:
        """:meth:`duplicate` on Redis Cluster: the same entry again writes the notes its
        answer recorded and did not write (its worker died in between); a new submission
        gets the reply and a note marked duplicate; then the acknowledgement."""
        job_id = entry.job_id or ""
        if stored.get("entry_id") == entry.id:
            self.notes.flush(job_id, again=True)
        else:
            self.notes.write({
                "reply_to": reply_to,
                "result": existing,
                "note": [*Notes.fields(job_id, entry.id, stored), "duplicate", "1"],
            })
        self.notes.acknowledge(entry)

    def dead_letter(self, entry: Entry) -> bool:
        """Move an entry delivered too often to the dead-letter stream and answer it,
        in one script, unless its job id is answered (then the entry is answered
        as a duplicate) or locked: returns False, writing nothing, while another
        entry's live owner holds the job id (the caller leaves this one waiting)."""
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
        dead = {
            keys.JOB_FIELD: raw,
            "entry_id": entry.id,
            "deliveries": str(deliveries),
            "last_error": json.dumps(last),
            "worker": ctx.name,
            "dead_at": f"{time.time():.3f}",
        }
        message = (
            f"gave up after {deliveries} deliveries (queue.max_deliveries); "
            f"last error: {last.get('code')}: {last.get('message')}"
        )
        result = self.error_result(entry, job_id, source, DEAD_LETTERED, message)
        result["last_error"] = last
        outcome = self._write(
            entry, result, reply_to, "dead", [v for kv in dead.items() for v in kv]
        )
        if outcome == OWNED_ELSEWHERE:
            return False
        if outcome == ALREADY_ANSWERED:
            existing: Any = ctx.client.get(keys.result_key(job_id or ""))
            if existing is None:  # expired in between: decide again on the next delivery
                return False
            entry.job_id = job_id
            self.duplicate(entry, reply_to, existing)
            return True
        ctx.metrics.dead_lettered.inc()
        self.finish(entry, OUTCOME_DEAD, DEAD_LETTERED)
        log.warning("job %s (entry %s) dead-lettered: %s", job_id, entry.id, message)
        return True

    def finish(self, entry: Entry, outcome: str, code: str | None = None) -> None:
        """Count a finished entry."""
        ctx = self.ctx
        ctx.metrics.jobs.labels(outcome).inc()
        if code:
            ctx.metrics.errors.labels(code).inc()
        ctx.metrics.duration.labels(outcome).observe(time.monotonic() - entry.picked_at)
        with ctx.mutex:
            ctx.done += 1
