"""Every Redis key and stream name of restrav-monitor, in one place (leaf module).

Conventions (DESIGN.md): ``restrav:`` prefix; ``{...}`` is a Redis Cluster hash
tag: it keeps one stream's keys (or one job's keys) in one slot, so the score
append and the ``latest`` update can run in one script call. Keys with a
``{job_id}`` part carry a TTL; streams are capped. Stream ids are validated
(letters, digits, ``_ . -``) before they reach these functions.
"""

from __future__ import annotations

PREFIX = "restrav"

JOBS = f"{PREFIX}:jobs"
"""The clip queue: a stream of ``job`` fields (JSON, see :class:`monitor.queue.Job`)."""

JOBS_DEAD = f"{PREFIX}:jobs:dead"
"""Dead letters: jobs delivered ``max_deliveries`` times without completing."""

JOBS_ERRORS = f"{PREFIX}:jobs:errors"
"""Hash: stream entry id -> last error of a job that failed without a result (a bug)."""

RESULTS = f"{PREFIX}:results"
"""Stream of result notifications (job id, ok, error code); the full result is in
:func:`result_key`."""

REPLY_PREFIX = f"{PREFIX}:replies:"
"""Reply streams named by a job's ``reply_to`` must start with this."""

WORKERS_PREFIX = f"{PREFIX}:workers:"

JOB_FIELD = "job"
"""The stream field that holds a job's JSON."""

DEFAULT_GROUP = "workers"


def result_key(job_id: str) -> str:
    """The string key holding one job's result JSON (with a TTL)."""
    return f"{PREFIX}:results:{{{job_id}}}"


def runs_key(job_id: str) -> str:
    """Counter of scoring runs started for a job id (with a TTL): proves at-most-once scoring."""
    return f"{PREFIX}:runs:{{{job_id}}}"


def lock_key(job_id: str) -> str:
    """Lock held by the worker scoring a job id (SET NX with a TTL renewed by its heartbeat)."""
    return f"{PREFIX}:lock:{{{job_id}}}"


def notes_key(job_id: str) -> str:
    """On Redis Cluster only: the notes (reply, note, dead letter) of a job's answer still
    to write, JSON, set with its result and deleted once they are written (with a TTL)."""
    return f"{PREFIX}:notes:{{{job_id}}}"


def heartbeat_key(worker: str) -> str:
    """One worker's heartbeat (JSON, TTL a few heartbeat intervals)."""
    return f"{WORKERS_PREFIX}{worker}"


EVENTS = f"{PREFIX}:events"
"""Alert events of every stream (a capped Redis stream)."""
STREAMS_DESIRED = f"{PREFIX}:streams"
"""Hash: stream id -> JSON spec of the desired set of live streams (credentials stripped)."""

STREAMS_DESIRED_MARK = "~set"
"""A field of :data:`STREAMS_DESIRED` that is no stream (stream ids never hold ``~``):
set by serve replicas once they follow the hash, never deleted by an edit. The hash
without it, after a replica saw it, means Redis lost its data (``monitor.cluster.manager``)."""


def stream_scores(stream_id: str) -> str:
    """The capped score stream of one live feed: ``restrav:{stream}:scores``."""
    return f"{PREFIX}:{{{stream_id}}}:scores"


def stream_latest(stream_id: str) -> str:
    """The hash with the latest score of one live feed: ``restrav:{stream}:latest``."""
    return f"{PREFIX}:{{{stream_id}}}:latest"


def stream_events(stream_id: str) -> str:
    """On Redis Cluster only: the fenced alert events of one live feed (capped stream),
    each copied to :data:`EVENTS` once written (``monitor.live.sinks.fenced``)."""
    return f"{PREFIX}:{{{stream_id}}}:events"


def stream_lease(stream_id: str) -> str:
    """The lease on one live feed: :func:`lease_value` with a TTL (SET NX PX)."""
    return f"{PREFIX}:{{{stream_id}}}:lease"


def lease_value(replica: str, token: int) -> str:
    """What a lease key holds: ``"<replica> <fence>"`` (replica names have no spaces)."""
    return f"{replica} {token}"


def stream_fence(stream_id: str) -> str:
    """The fencing counter of one live feed: INCR'd by every new owner. It grows as
    long as Redis keeps its data; after a data loss it starts again at 1 (so a
    fenced write is checked against the lease holder too, :mod:`monitor.live.sinks.fenced`)."""
    return f"{PREFIX}:{{{stream_id}}}:fence"


SERVE_SOLO = f"{PREFIX}:serve:solo"
"""String held (TTL, renewed) by the one serve process that runs without cluster mode on
this Redis (:class:`monitor.live.solo.SoloGuard`); a second one is refused."""

REPLICAS = f"{PREFIX}:replicas"
"""Set of `restrav serve` replica names (members whose heartbeat key expired are pruned)."""

STREAM_STATUS = f"{PREFIX}:streams:status"
"""Hash: stream id -> JSON status written by the stream's owner (what any replica's API shows)."""


def replica_key(replica: str) -> str:
    """One serve replica's heartbeat (JSON: capacity, owned, draining) with a TTL."""
    return f"{PREFIX}:replica:{replica}"
