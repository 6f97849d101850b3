"""The Redis Streams clip queue: jobs in, results out, at least once, nothing lost.

Protocol (key names in :mod:`monitor.keys`):

* A producer appends ``XADD restrav:jobs * job <JSON>``; the JSON is a
  :class:`Job`. ``restrav submit`` does this, any language can.
* Workers read with ``XREADGROUP`` in one consumer group, at most as many
  entries as they have free slots (``concurrency``): a worker never holds work
  it is not doing.
* For each entry a worker: answers an invalid payload with an ``invalid_job``
  error; answers a job id whose result exists with that result without scoring
  again (idempotency); moves the entry to the dead-letter stream if it was
  delivered more than ``max_deliveries`` times; otherwise takes the job id's lock,
  counts the run, fetches the source within the configured bounds, scores the
  whole clip, and answers: in one Lua script it writes ``restrav:results:{job_id}``
  (TTL), appends to the results stream and the job's reply stream, and ``XACK``\\s.
* One answer per job id: the answer of a scoring run is fenced by the job id's
  lock, which holds this attempt's token; a worker that lost the job (paused or
  cut off from Redis past the visibility timeout) finds another token or a
  stored result, and its late answer is discarded and counted
  (``restrav_queue_late_answers_total``): no second note, no second reply.
* Bad input (missing, corrupt, too large, not allowed...) is a result with a
  reason code, acknowledged like a score. An unexpected exception (a bug) is
  recorded as the job's last error and the entry is left unacknowledged: it is
  retried, and after ``max_deliveries`` it is dead-lettered with that error.
* Leases: while a worker works on an entry its heartbeat thread re-claims it
  every ``heartbeat_interval_s`` (``XCLAIM ... JUSTID``, which resets the idle
  time without counting a delivery). A worker that dies stops renewing; after
  ``visibility_timeout_s`` of idleness any live worker takes the entry over
  with ``XAUTOCLAIM``. On start a worker first finishes its own pending entries
  (same consumer name).
* A missing consumer group (``NOGROUP``: Redis restarted without its data) is
  recreated, logged and counted (``restrav_queue_group_recreated_total``).
* The job stream is trimmed with ``XTRIM MINID ~`` to the oldest entry that is
  pending or not yet delivered in any group, so trimming never drops
  unacknowledged work.

Modules: :mod:`.jobs` (payloads, codes), :mod:`.scoring` (one clip), :mod:`.ops`
(producers and operators), and the worker's parts: :mod:`.leases` (heartbeat,
locks, renewal), :mod:`.reclaim` (what to take next), :mod:`.backoff`,
:mod:`.execution` (one job), :mod:`.answers` (fenced answers), :mod:`.worker`.

A library: no signals, no argv. :meth:`Worker.run` returns when its stop event
is set; the composition root owns signals and exit codes.

Layer: may use ``core``, ``media`` and the base; nothing above (``live``,
``cluster``, ``webrtc``) and not ``learn``.
"""

from __future__ import annotations

from .answers import Answers
from .execution import JobRunner, WorkerHooks
from .jobs import (
    DEAD_LETTERED,
    INTERNAL,
    INVALID_JOB,
    JOB_ID_PATTERN,
    MAX_JOB_BYTES,
    MAX_SOURCE_CHARS,
    REPLY_PATTERN,
    UNKNOWN_CLASSIFIER,
    WORKER_LOST,
    Entry,
    Job,
    JobOptions,
    JobRejected,
    QueueFull,
    new_job_id,
)
from .leases import (
    Leases,
    default_worker_name,
    heartbeat_is_fresh,
    read_heartbeat,
    worker_health,
)
from .ops import (
    QueueStats,
    backlog,
    connect,
    enqueue,
    ensure_group,
    get_result,
    is_nogroup,
    queue_stats,
    trim_jobs,
    wait_results,
)
from .reclaim import Fetcher
from .scoring import ClipScorer, Scorer, aggregate
from .worker import Worker

__all__ = [
    "DEAD_LETTERED",
    "INTERNAL",
    "INVALID_JOB",
    "JOB_ID_PATTERN",
    "MAX_JOB_BYTES",
    "MAX_SOURCE_CHARS",
    "REPLY_PATTERN",
    "UNKNOWN_CLASSIFIER",
    "WORKER_LOST",
    "Answers",
    "ClipScorer",
    "Entry",
    "Fetcher",
    "Job",
    "JobOptions",
    "JobRejected",
    "JobRunner",
    "Leases",
    "QueueFull",
    "QueueStats",
    "Scorer",
    "Worker",
    "WorkerHooks",
    "aggregate",
    "backlog",
    "connect",
    "default_worker_name",
    "enqueue",
    "ensure_group",
    "get_result",
    "heartbeat_is_fresh",
    "is_nogroup",
    "new_job_id",
    "queue_stats",
    "read_heartbeat",
    "trim_jobs",
    "wait_results",
    "worker_health",
]
