"""Redis Cluster: the notes of an answer (reply, dead letter, note on
``restrav:results``), written one key at a time after the answer's script in the job
id's slot recorded them (:mod:`.answers` says why and what is guaranteed), each with
its ``WAIT`` on its own node when durability is on, and the acknowledgement."""

from __future__ import annotations

import json
import logging
from typing import Any

import redis

from .. import keys
from ..redis_conn import key_pipeline, run_key_pipeline
from ..redis_faults import redis_unavailable
from .context import WorkerContext
from .jobs import Entry

log = logging.getLogger("restrav.queue")

REPLY_MAXLEN = 10_000
"""Cap (approximate) of a reply stream."""

LOOK_BACK = 1000
"""Redis Cluster: how many of the newest entries of a note's stream are searched for
the note of an earlier try before it is written again (:meth:`Notes.flush`):
a retry comes seconds later, so more notes than this in between are not expected."""


class Notes:
    """Writes the recorded notes of a worker's answers on Redis Cluster."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx

    @staticmethod
    def fields(job_id: str, entry_id: str, stored: dict[str, Any]) -> list[str]:
        """The fields of a note on ``restrav:results`` for a result ``stored``."""
        return ["job_id", job_id, "entry_id", entry_id, "ok", "1" if stored.get("ok") else "0",
                "code", (stored.get("error") or {}).get("code", "")]

    def flush(self, job_id: str, again: bool) -> None:
        """Cluster: write the notes recorded with ``job_id``'s result, if any are left,
        then delete the record (each a durable write). ``again``: an earlier try (whose
        replication was not confirmed, or whose worker died) may have written some of
        them: each is looked for first among the newest :data:`LOOK_BACK` entries of its
        stream and not written twice."""
        raw: Any = self.ctx.client.get(keys.notes_key(job_id))
        if raw is None:
            return
        self.write(json.loads(raw), again)
        self._durable(keys.notes_key(job_id), lambda p: p.delete(keys.notes_key(job_id)),
                      f"notes of job {job_id} written")

    def _written(self, stream: str, field: str, value: str) -> bool:
        """Whether one of the newest :data:`LOOK_BACK` entries of ``stream`` has
        ``field`` equal to ``value`` (a note of an earlier try)."""
        newest: Any = self.ctx.client.xrevrange(stream, count=LOOK_BACK)
        return any(f.get(field) == value for _, f in newest)

    def write(self, notes: dict[str, Any], again: bool = False) -> None:
        """Cluster: the reply (a reply stream of the wrong type is skipped, logged), the
        dead letter and the note on ``restrav:results``, one key at a time; with
        ``again``, each only if an earlier try did not write it (:meth:`flush`)."""
        ctx = self.ctx
        reply_to = notes.get("reply_to")
        note = notes["note"]
        entry_id = note[note.index("entry_id") + 1]
        if reply_to and notes.get("result") is not None and not (
            again and self._written_safely(reply_to, "result", notes["result"])
        ):
            def reply(p: Any) -> None:
                p.xadd(reply_to, {"result": notes["result"]}, maxlen=REPLY_MAXLEN,
                       approximate=True)
                p.expire(reply_to, ctx.settings.result_ttl_s)
            try:
                self._durable(reply_to, reply, f"reply on {reply_to}")
            except redis.ResponseError as exc:
                if redis_unavailable(exc):
                    raise
                log.warning("reply to %s not written: %s", reply_to, exc)
        dead = notes.get("dead")
        if dead and not (again and self._written(keys.JOBS_DEAD, "entry_id", entry_id)):
            fields = dict(zip(dead[::2], dead[1::2], strict=True))
            self._durable(keys.JOBS_DEAD, lambda p: p.xadd(
                keys.JOBS_DEAD, fields, maxlen=ctx.settings.dead_maxlen, approximate=True),
                "dead letter")
        if again and self._written(keys.RESULTS, "entry_id", entry_id):
            return
        fields = dict(zip(note[::2], note[1::2], strict=True))
        self._durable(keys.RESULTS, lambda p: p.xadd(
            keys.RESULTS, fields, maxlen=ctx.settings.results_maxlen, approximate=True),
            f"note on {keys.RESULTS}")

    def _written_safely(self, stream: str, field: str, value: str) -> bool:
        """:meth:`_written` for a reply stream, which may be of the wrong type (then
        False: writing it is skipped and logged)."""
        try:
            return self._written(stream, field, value)
        except redis.ResponseError as exc:
            if redis_unavailable(exc):
                raise
            return False

    def _durable(self, key: str, queue: Any, what: str) -> None:
        """Run the writes ``queue(pipe)`` puts on a pipeline of ``key``'s node, with a
        ``WAIT`` after them when durability is on (too few acknowledgements raise
        :class:`~monitor.redis_faults.NotReplicated`)."""
        ctx = self.ctx
        pipe = key_pipeline(ctx.client, key)
        queue(pipe)
        waits = ctx.durability.queue_wait(pipe)
        replies = run_key_pipeline(ctx.client, pipe)
        if waits:
            ctx.durability.check(replies[-1], what)

    def acknowledge(self, entry: Entry) -> None:
        """Cluster: forget the entry's last error and acknowledge it (two slots)."""
        ctx = self.ctx
        ctx.client.hdel(keys.JOBS_ERRORS, entry.id)
        ctx.client.xack(keys.JOBS, ctx.group, entry.id)
