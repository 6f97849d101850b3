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
  whole clip, writes ``restrav:results:{job_id}`` (TTL), appends to the results
  stream and the job's reply stream, and only then ``XACK``\\s.
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
* The job stream is trimmed with ``XTRIM MINID ~`` to the oldest entry that is
  pending or not yet delivered in any group, so trimming never drops
  unacknowledged work.

This module is a library: no signals, no argv. :class:`Worker.run` returns
when its stop event is set; the composition root owns signals and exit codes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import keys
from .classifier import Classifier, load_classifier
from .config import QueueSettings
from .decode import DecodeLimits
from .embed import Embedder
from .errors import InputError, RestravError
from .fetch import SourcePolicy, local_source
from .metrics import QueueMetrics
from .pipeline import ClipResult, score_file
from .redaction import redact_url
from .safe_input import OpenedFile
from .types import FEATURE_NAMES, Score

log = logging.getLogger("restrav.queue")

JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
REPLY_PATTERN = r"^restrav:replies:[A-Za-z0-9._:{}-]{1,128}$"
MAX_SOURCE_CHARS = 4096
MAX_JOB_BYTES = 16 * 1024

# reason codes that are not exceptions of monitor.errors
INVALID_JOB = "invalid_job"
UNKNOWN_CLASSIFIER = "unknown_classifier"
DEAD_LETTERED = "dead_lettered"
WORKER_LOST = "worker_lost"
INTERNAL = "internal"

OUTCOME_SCORED = "scored"
OUTCOME_ERROR = "error"
OUTCOME_DUPLICATE = "duplicate"
OUTCOME_DEAD = "dead_lettered"
OUTCOME_RELEASED = "released"


# --- payloads ------------------------------------------------------------------------------


class JobOptions(BaseModel):
    """How to score a clip. ``hop`` is in 11.5 Hz samples (1 = a window at every sample)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    windows: bool = Field(True, description="Score every window along the clip.")
    hop: int = Field(1, ge=1, description="One window every `hop` samples.")
    classifier: str | None = Field(
        None, max_length=128, description="Name of a classifier in queue.classifiers."
    )


class Job(BaseModel):
    """One clip to score: the JSON in the ``job`` field of a ``restrav:jobs`` entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str = Field(
        pattern=JOB_ID_PATTERN, description="Idempotency key: one result per job id."
    )
    source: str = Field(
        min_length=1, max_length=MAX_SOURCE_CHARS, description="Absolute path or http(s) URL."
    )
    options: JobOptions = JobOptions()
    reply_to: str | None = Field(
        None,
        pattern=REPLY_PATTERN,
        description="Stream to append the full result to (must start with restrav:replies:).",
    )


def new_job_id() -> str:
    """A fresh random job id."""
    return uuid.uuid4().hex


class QueueFull(RestravError):
    """The queue holds ``max_queue_length`` unfinished jobs: try again later."""

    code = "queue_full"


# --- scoring -------------------------------------------------------------------------------


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def aggregate(result: ClipResult) -> dict[str, Any]:
    """The clip-level summary of a scored clip.

    Over the windows along the clip (the centred window alone when windows were
    not asked for), using only unflagged windows (no repeated frames) when there
    are any, else all of them (``basis`` says which):

    * ``score_mean``/``score_max``: mean and max of the windows' P(AI) (null
      without a classifier); ``is_ai``: ``score_mean >= threshold``;
      ``ai_fraction``: share of windows at or above the threshold;
    * ``features_mean``: the mean of each of the 21 features, useful without a
      classifier (``theta_mean`` is the paper's training-free curvature statistic).
    """
    windows: list[Score] = list(result.windows) if result.windows else [result.centre]
    unflagged = [w for w in windows if not w.flagged]
    if not result.windows:
        basis_name = "centre window"
    elif unflagged:
        basis_name = "unflagged windows"
    else:
        basis_name = "all windows (every window flagged)"
    basis = unflagged or windows
    scores = [w.p_ai for w in basis if w.p_ai is not None]
    threshold = basis[0].threshold if basis else None
    mean = _mean(scores)
    out: dict[str, Any] = {
        "basis": basis_name,
        "windows": len(windows),
        "flagged_windows": len(windows) - len(unflagged),
        "used_windows": len(basis),
        "score_mean": mean,
        "score_max": max(scores) if scores else None,
        "threshold": threshold,
        "is_ai": (mean >= threshold) if mean is not None and threshold is not None else None,
        "ai_fraction": (
            sum(s >= threshold for s in scores) / len(scores)
            if scores and threshold is not None
            else None
        ),
        "features_mean": {
            name: float(sum(float(w.window.features[i]) for w in basis) / len(basis))
            for i, name in enumerate(FEATURE_NAMES)
        },
    }
    return out


class ClipScorer:
    """Scores one local clip for the queue: the model loaded once, classifiers by name.

    ``classifiers`` maps names a job may ask for to artifact directories; they
    are loaded on first use and kept. ``default`` scores jobs that name none.
    """

    def __init__(
        self,
        embedder: Embedder,
        default: Classifier | None,
        limits: DecodeLimits,
        classifiers: dict[str, Path] | None = None,
        max_hop: int = 1000,
    ) -> None:
        self.embedder = embedder
        self.default = default
        self.limits = limits
        self.paths = dict(classifiers or {})
        self.max_hop = max_hop
        self._loaded: dict[str, Classifier] = {}
        self._lock = threading.Lock()

    def classifier(self, name: str | None) -> Classifier | None:
        """The classifier for a job (raises :class:`JobRejected` for an unknown name)."""
        if name is None:
            return self.default
        with self._lock:
            if name not in self._loaded:
                if name not in self.paths:
                    known = ", ".join(sorted(self.paths)) or "none configured"
                    raise JobRejected(
                        UNKNOWN_CLASSIFIER, f"unknown classifier {name!r} (known: {known})"
                    )
                self._loaded[name] = load_classifier(self.paths[name])
            return self._loaded[name]

    def check(self, options: JobOptions) -> Classifier | None:
        """Validate options against this worker's limits; return the classifier to use."""
        if options.hop > self.max_hop:
            raise JobRejected(
                INVALID_JOB, f"hop {options.hop} exceeds queue.max_hop {self.max_hop}"
            )
        return self.classifier(options.classifier)

    def __call__(self, path: OpenedFile, options: JobOptions, shown: str) -> dict[str, Any]:
        """Score ``path``; return ``{"clip": ClipResult.to_json(), "aggregate": ...}``."""
        classifier = self.check(options)
        result = score_file(
            path,
            self.embedder,
            classifier,
            self.limits,
            all_windows=options.windows,
            hop=options.hop,
        )
        clip = result.to_json()
        clip["path"] = shown
        return {"clip": clip, "aggregate": aggregate(result)}


class JobRejected(Exception):
    """A job that cannot be run as asked (reason ``code``); answered, never retried."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


Scorer = Callable[[OpenedFile, JobOptions, str], dict[str, Any]]


# --- the queue as seen by producers and operators -----------------------------------------


def connect(url: str, timeout_s: float = 2.0) -> redis.Redis:
    """A Redis client (decoded strings) for the queue."""
    client: redis.Redis = redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=timeout_s,
        health_check_interval=30,
    )
    return client


def ensure_group(client: redis.Redis, group: str) -> None:
    """Create the consumer group (and the stream) if missing; from the stream's start."""
    try:
        client.xgroup_create(keys.JOBS, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def backlog(client: redis.Redis, group: str) -> int:
    """Jobs not yet finished: undelivered plus pending in ``group`` (XLEN if no group)."""
    try:
        groups = client.xinfo_groups(keys.JOBS)
    except redis.ResponseError:
        return 0
    for g in groups:
        if g["name"] == group:
            lag = g.get("lag")
            lag_n = int(lag) if lag is not None else int(client.xlen(keys.JOBS))
            return lag_n + int(g["pending"])
    return int(client.xlen(keys.JOBS))


def enqueue(client: redis.Redis, job: Job, settings: QueueSettings) -> str:
    """Append ``job`` to the queue; return its entry id. Raises :class:`QueueFull`."""
    if backlog(client, settings.group) >= settings.max_queue_length:
        raise QueueFull(
            f"the queue holds {settings.max_queue_length} unfinished jobs "
            "(queue.max_queue_length); try again later or add workers"
        )
    entry_id: Any = client.xadd(keys.JOBS, {keys.JOB_FIELD: job.model_dump_json()})
    return str(entry_id)


def get_result(client: redis.Redis, job_id: str) -> dict[str, Any] | None:
    """The stored result of a job id, or None."""
    raw = client.get(keys.result_key(job_id))
    return json.loads(raw) if raw else None


def wait_results(
    client: redis.Redis, reply_to: str, job_ids: set[str], timeout_s: float
) -> Iterator[dict[str, Any]]:
    """Yield results for ``job_ids`` from a reply stream as they arrive, until all came
    or ``timeout_s`` passed (then the rest are simply not yielded)."""
    waiting = set(job_ids)
    last = "0"
    deadline = time.monotonic() + timeout_s
    while waiting:
        left_ms = int((deadline - time.monotonic()) * 1000)
        if left_ms <= 0:
            return
        resp: Any = client.xread({reply_to: last}, count=100, block=min(left_ms, 1000))
        for _, entries in resp or []:
            for entry_id, fields in entries:
                last = entry_id
                result = json.loads(fields["result"])
                if result.get("job_id") in waiting:
                    waiting.discard(result["job_id"])
                    yield result


def _entry_ms(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0])


def _next_id(entry_id: str) -> str:
    ms, seq = entry_id.split("-", 1)
    return f"{ms}-{int(seq) + 1}"


def trim_jobs(client: redis.Redis) -> int:
    """Trim the job stream below the oldest entry any group still needs; return removed.

    For every group the bound is its oldest pending entry, or the entry after its
    last-delivered id when nothing is pending: entries before it are all
    acknowledged. ``MINID ~`` removes whole macro nodes only, so it never removes
    more than that. Without groups nothing is trimmed.
    """
    try:
        groups = client.xinfo_groups(keys.JOBS)
    except redis.ResponseError:
        return 0
    if not groups:
        return 0
    bounds: list[tuple[int, int]] = []
    for g in groups:
        summary = client.xpending(keys.JOBS, g["name"])
        pending_min = str(summary["min"]) if summary["pending"] and summary["min"] else None
        bound = pending_min or _next_id(str(g["last-delivered-id"]))
        ms, seq = bound.split("-", 1)
        bounds.append((int(ms), int(seq)))
    low_ms, low_seq = min(bounds)
    removed: Any = client.xtrim(keys.JOBS, minid=f"{low_ms}-{low_seq}", approximate=True)
    return int(removed)


@dataclass(frozen=True)
class QueueStats:
    """A snapshot of the queue for one group."""

    length: int
    lag: int
    pending: int
    oldest_pending_age_s: float
    dead: int


def queue_stats(client: redis.Redis, group: str, now_s: float | None = None) -> QueueStats:
    """Length, lag, pending count, oldest pending age and dead letters of the queue."""
    now_s = time.time() if now_s is None else now_s
    length = int(client.xlen(keys.JOBS))
    lag = pending = 0
    age = 0.0
    try:
        groups = client.xinfo_groups(keys.JOBS)
    except redis.ResponseError:
        groups = []
    for g in groups:
        if g["name"] == group:
            lag = int(g["lag"]) if g.get("lag") is not None else length
            pending = int(g["pending"])
            if pending:
                # read separately: the job may be acknowledged in between (min is then None)
                summary = client.xpending(keys.JOBS, group)
                if summary["pending"] and summary["min"]:
                    age = max(0.0, now_s - _entry_ms(str(summary["min"])) / 1000.0)
    return QueueStats(length, lag, pending, age, int(client.xlen(keys.JOBS_DEAD)))


# --- the worker ----------------------------------------------------------------------------


@dataclass
class WorkerHooks:
    """Test seams (off by default; the CLI enables them only under RESTRAV_TESTING=1)."""

    before_score: Callable[[Job, int], None] | None = None
    """Called with the job and its delivery number just before its source is fetched."""


@dataclass
class _Entry:
    id: str
    fields: dict[str, str]
    deliveries: int
    picked_at: float = field(default_factory=time.monotonic)
    job_id: str | None = None


def heartbeat_is_fresh(beat: dict[str, Any] | None, now_s: float, interval_s: float) -> bool:
    """True when a heartbeat exists and both its beat and its main loop are recent."""
    if not beat:
        return False
    limit = 3 * interval_s
    return (now_s - float(beat.get("beat_at", 0))) <= limit and (
        now_s - float(beat.get("loop_at", 0))
    ) <= limit + float(beat.get("loop_slack_s", 0))


def read_heartbeat(client: redis.Redis, worker: str) -> dict[str, Any] | None:
    """A worker's last heartbeat, or None when it has expired."""
    raw = client.get(keys.heartbeat_key(worker))
    return json.loads(raw) if raw else None


def default_worker_name() -> str:
    """The consumer name when none is given: the host name (stable across restarts)."""
    return socket.gethostname()


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
    ) -> None:
        if settings.heartbeat_interval_s * 2 > settings.visibility_timeout_s:
            raise ValueError(
                "queue.heartbeat_interval_s must be at most half of queue.visibility_timeout_s"
            )
        self.client = client
        self.settings = settings
        self.scorer = scorer
        self.metrics = metrics
        self.name = name or default_worker_name()
        self.policy = policy or SourcePolicy()
        self.max_file_bytes = max_file_bytes
        self.hooks = hooks or WorkerHooks()
        self.group = settings.group
        self._inflight: dict[str, _Entry] = {}
        self._released: set[str] = set()
        self._threads: dict[str, threading.Thread] = {}
        self._mutex = threading.Lock()
        self._slot_freed = threading.Event()
        self._beat_stop = threading.Event()
        self._loop_at = time.time()
        self._started_at = time.time()
        self.done = 0
        self._own_cursor: str | None = "0"
        self._reclaim_cursor = "0-0"
        self._last_tick = 0.0
        self._last_reclaim = 0.0

    # -- keys and small Redis operations --

    @property
    def _visibility_ms(self) -> int:
        return int(self.settings.visibility_timeout_s * 1000)

    @property
    def _lock_ms(self) -> int:
        # the lock expires before the lease can be reclaimed, so a reclaiming worker finds it free
        return max(1, int(self.settings.visibility_timeout_s * 800))

    def _deliveries(self, entry_id: str) -> int:
        rows = self.client.xpending_range(keys.JOBS, self.group, entry_id, entry_id, 1)
        return int(rows[0]["times_delivered"]) if rows else 1

    def beat(self) -> None:
        """Write the heartbeat and renew the leases and locks of in-flight jobs."""
        now = time.time()
        with self._mutex:
            entries = list(self._inflight.values())
        beat = {
            "worker": self.name,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": self._started_at,
            "beat_at": now,
            "loop_at": self._loop_at,
            "loop_slack_s": self.settings.block_ms / 1000 + self.settings.reclaim_interval_s,
            "jobs": [e.job_id or e.id for e in entries],
            "done": self.done,
        }
        ttl_ms = int(3 * self.settings.heartbeat_interval_s * 1000)
        pipe = self.client.pipeline(transaction=False)
        pipe.set(keys.heartbeat_key(self.name), json.dumps(beat), px=ttl_ms)
        if entries:
            pipe.xclaim(
                keys.JOBS, self.group, self.name, 0, [e.id for e in entries], justid=True
            )
            for e in entries:
                if e.job_id is not None:
                    pipe.pexpire(keys.lock_key(e.job_id), self._lock_ms)
        pipe.execute()

    def _beat_loop(self) -> None:
        while not self._beat_stop.wait(self.settings.heartbeat_interval_s):
            try:
                self.beat()
            except redis.RedisError as exc:
                self.metrics.redis_errors.inc()
                log.warning("heartbeat failed: %s", exc)

    # -- answering --

    def _publish(
        self,
        entry: _Entry,
        result: dict[str, Any],
        reply_to: str | None,
        keep_existing: bool = False,
    ) -> None:
        """Write the result, notify, and only then acknowledge (one ordered pipeline).

        ``keep_existing``: never replace a stored result of the same job id (for
        answers that are not a scoring: an invalid payload or a dead letter).
        """
        body = json.dumps(result)
        pipe = self.client.pipeline(transaction=False)
        job_id = result.get("job_id")
        if job_id:
            pipe.set(
                keys.result_key(job_id), body, ex=self.settings.result_ttl_s, nx=keep_existing
            )
        error = result.get("error") or {}
        pipe.xadd(
            keys.RESULTS,
            {
                "job_id": job_id or "",
                "entry_id": entry.id,
                "ok": "1" if result.get("ok") else "0",
                "code": error.get("code", ""),
            },
            maxlen=self.settings.results_maxlen,
            approximate=True,
        )
        if reply_to:
            pipe.xadd(reply_to, {"result": body}, maxlen=10_000, approximate=True)
            pipe.expire(reply_to, self.settings.result_ttl_s)
        pipe.xack(keys.JOBS, self.group, entry.id)
        pipe.hdel(keys.JOBS_ERRORS, entry.id)
        if job_id:
            pipe.delete(keys.lock_key(job_id))
        pipe.execute()

    def _base(self, entry: _Entry, job_id: str | None, source: str | None) -> dict[str, Any]:
        return {
            "job_id": job_id,
            "entry_id": entry.id,
            "source": redact_url(source) if source else None,
            "worker": self.name,
            "attempt": entry.deliveries,
            "enqueued_at": _entry_ms(entry.id) / 1000.0,
        }

    def _finish(self, entry: _Entry, outcome: str, code: str | None = None) -> None:
        self.metrics.jobs.labels(outcome).inc()
        if code:
            self.metrics.errors.labels(code).inc()
        self.metrics.duration.labels(outcome).observe(time.monotonic() - entry.picked_at)
        with self._mutex:
            self.done += 1

    def _error_result(
        self, entry: _Entry, job_id: str | None, source: str | None, code: str, message: str
    ) -> dict[str, Any]:
        out = self._base(entry, job_id, source)
        out.update(
            {"ok": False, "status": "error", "error": {"code": code, "message": message}}
        )
        return out

    def _dead_letter(self, entry: _Entry) -> None:
        raw = entry.fields.get(keys.JOB_FIELD, "")
        last_raw = self.client.hget(keys.JOBS_ERRORS, entry.id)
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
        job_id, source, reply_to = _peek(raw)
        self.client.xadd(
            keys.JOBS_DEAD,
            {
                keys.JOB_FIELD: raw,
                "entry_id": entry.id,
                "deliveries": str(deliveries),
                "last_error": json.dumps(last),
                "worker": self.name,
                "dead_at": f"{time.time():.3f}",
            },
            maxlen=self.settings.dead_maxlen,
            approximate=True,
        )
        message = (
            f"gave up after {deliveries} deliveries (queue.max_deliveries); "
            f"last error: {last.get('code')}: {last.get('message')}"
        )
        result = self._error_result(entry, job_id, source, DEAD_LETTERED, message)
        result["last_error"] = last
        self._publish(entry, result, reply_to, keep_existing=True)
        self.metrics.dead_lettered.inc()
        self._finish(entry, OUTCOME_DEAD, DEAD_LETTERED)
        log.warning("job %s (entry %s) dead-lettered: %s", job_id, entry.id, message)

    # -- one job --

    def process(self, entry: _Entry) -> None:
        """Handle one entry to the end: answered and acknowledged, or left for a retry."""
        if not entry.fields:
            # the entry was deleted (XDEL) while pending: nothing to do but acknowledge
            self.client.xack(keys.JOBS, self.group, entry.id)
            self._finish(entry, OUTCOME_ERROR, INVALID_JOB)
            return
        raw = entry.fields.get(keys.JOB_FIELD)
        try:
            if raw is None:
                raise ValueError(f"the entry has no {keys.JOB_FIELD!r} field")
            if len(raw) > MAX_JOB_BYTES:
                raise ValueError(f"job JSON over {MAX_JOB_BYTES} bytes")
            job = Job.model_validate_json(raw)
        except (ValidationError, ValueError) as exc:
            job_id, source, reply_to = _peek(raw or "")
            message = f"invalid job: {_short(exc)}"
            self._publish(
                entry,
                self._error_result(entry, job_id, source, INVALID_JOB, message),
                reply_to,
                keep_existing=True,
            )
            self._finish(entry, OUTCOME_ERROR, INVALID_JOB)
            return
        entry.job_id = job.job_id

        existing: Any = self.client.get(keys.result_key(job.job_id))
        if existing is not None:
            self._answer_duplicate(entry, job, existing)
            return
        if entry.deliveries > self.settings.max_deliveries:
            self._dead_letter(entry)
            return
        held = self.client.set(keys.lock_key(job.job_id), self.name, nx=True, px=self._lock_ms)
        if not held and self.client.get(keys.lock_key(job.job_id)) != self.name:
            # another worker is scoring this job id right now: leave the entry pending;
            # it is reclaimed later and then answered from the stored result
            log.info("job %s is scored elsewhere; entry %s left pending", job.job_id, entry.id)
            return
        self.client.incr(keys.runs_key(job.job_id))
        self.client.expire(keys.runs_key(job.job_id), self.settings.result_ttl_s)
        if self.hooks.before_score is not None:
            self.hooks.before_score(job, entry.deliveries)

        shown = redact_url(job.source)
        started = time.time()
        try:
            with local_source(job.source, self.policy, self.max_file_bytes) as path:
                scored = self.scorer(path, job.options, job.source)
            result = self._base(entry, job.job_id, job.source)
            result.update({"ok": True, "status": "scored", "error": None})
            result["options"] = job.options.model_dump()
            result.update(scored)
            outcome, code = OUTCOME_SCORED, None
        except (InputError, JobRejected) as exc:
            message = exc.message.replace(str(job.source), shown)
            result = self._error_result(entry, job.job_id, job.source, exc.code, message)
            outcome, code = OUTCOME_ERROR, exc.code
        except Exception as exc:  # job runner boundary (sanctioned): a bug must not stop the worker
            log.exception("internal error on job %s (entry %s)", job.job_id, entry.id)
            self.metrics.errors.labels(INTERNAL).inc()
            self.client.hset(
                keys.JOBS_ERRORS,
                entry.id,
                json.dumps({"code": INTERNAL, "message": f"{type(exc).__name__}: {_short(exc)}"}),
            )
            self.client.delete(keys.lock_key(job.job_id))
            return  # not acknowledged: retried after the visibility timeout, then dead-lettered
        with self._mutex:
            if entry.id in self._released:
                # handed back at shutdown: another worker owns it now, do not answer twice
                log.info("entry %s finished after it was released; result dropped", entry.id)
                return
        result["started_at"] = started
        result["finished_at"] = time.time()
        result["duration_s"] = result["finished_at"] - started
        self._publish(entry, result, job.reply_to)
        self._finish(entry, outcome, code)

    def _answer_duplicate(self, entry: _Entry, job: Job, existing: str) -> None:
        pipe = self.client.pipeline(transaction=False)
        if job.reply_to:
            pipe.xadd(job.reply_to, {"result": existing}, maxlen=10_000, approximate=True)
            pipe.expire(job.reply_to, self.settings.result_ttl_s)
        stored = json.loads(existing)
        pipe.xadd(  # the note every answer leaves, marked as a repeat of the stored result
            keys.RESULTS,
            {
                "job_id": job.job_id,
                "entry_id": entry.id,
                "ok": "1" if stored.get("ok") else "0",
                "code": (stored.get("error") or {}).get("code", ""),
                "duplicate": "1",
            },
            maxlen=self.settings.results_maxlen,
            approximate=True,
        )
        pipe.xack(keys.JOBS, self.group, entry.id)
        pipe.hdel(keys.JOBS_ERRORS, entry.id)
        pipe.execute()
        self._finish(entry, OUTCOME_DUPLICATE)

    # -- the loop --

    def _run_entry(self, entry: _Entry) -> None:
        try:
            self.process(entry)
        except redis.RedisError as exc:
            # not acknowledged: the entry is retried after the visibility timeout
            self.metrics.redis_errors.inc()
            log.warning("redis error on entry %s: %s", entry.id, exc)
        finally:
            with self._mutex:
                self._inflight.pop(entry.id, None)
                self._threads.pop(entry.id, None)
                self.metrics.in_progress.set(len(self._inflight))
            self._slot_freed.set()

    def _start(self, entry: _Entry) -> None:
        thread = threading.Thread(
            target=self._run_entry, args=(entry,), name=f"job-{entry.id}", daemon=True
        )
        with self._mutex:
            if entry.id in self._inflight:
                return  # reclaimed from ourselves (a late lease renewal): already running
            self._inflight[entry.id] = entry
            self._threads[entry.id] = thread
            self.metrics.in_progress.set(len(self._inflight))
        thread.start()

    def _free_slots(self) -> int:
        with self._mutex:
            return self.settings.concurrency - len(self._inflight)

    def _fetch(self, count: int, block: bool) -> list[_Entry]:
        """Up to ``count`` entries: own pending first, then reclaimed, then new ones."""
        if self._own_cursor is not None:
            own: Any = self.client.xreadgroup(
                self.group, self.name, {keys.JOBS: self._own_cursor}, count=count
            )
            rows: list[Any] = own[0][1] if own else []
            if rows:
                self._own_cursor = rows[-1][0]
                return [_Entry(i, f or {}, self._deliveries(i)) for i, f in rows]
            self._own_cursor = None
        now = time.monotonic()
        if now - self._last_reclaim >= self.settings.reclaim_interval_s:
            self._last_reclaim = now
            auto: Any = self.client.xautoclaim(
                keys.JOBS,
                self.group,
                self.name,
                self._visibility_ms,
                start_id=self._reclaim_cursor,
                count=count,
            )
            cursor, claimed = auto[0], auto[1]
            # the cursor walks the PEL; 0-0 means it went round, so start over next time
            self._reclaim_cursor = str(cursor)
            if claimed:
                self.metrics.reclaimed.inc(len(claimed))
                log.info("reclaimed %d job(s) from stalled workers", len(claimed))
                return [_Entry(i, f or {}, self._deliveries(i)) for i, f in claimed]
        new: Any = self.client.xreadgroup(
            self.group,
            self.name,
            {keys.JOBS: ">"},
            count=count,
            block=self.settings.block_ms if block else None,
        )
        fresh: list[Any] = new[0][1] if new else []
        return [_Entry(i, f or {}, 1) for i, f in fresh]

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
        trim_jobs(self.client)

    def run(self, stop: threading.Event) -> None:
        """Work until ``stop`` is set, then drain (``shutdown_grace_s``) and release the rest."""
        ensure_group(self.client, self.group)
        self.beat()
        beater = threading.Thread(target=self._beat_loop, name="heartbeat", daemon=True)
        beater.start()
        backoff = 0.1
        log.info("worker %s reading %s in group %s", self.name, keys.JOBS, self.group)
        try:
            while not stop.is_set():
                self._loop_at = time.time()
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
                    entries = self._fetch(free, block=True)
                    backoff = 0.1
                except redis.RedisError as exc:
                    self.metrics.redis_errors.inc()
                    log.warning("redis error in the worker loop: %s (retrying)", exc)
                    stop.wait(backoff)
                    backoff = min(backoff * 2, 5.0) * (0.5 + _jitter())
                    continue
                for entry in entries:
                    self._start(entry)
        finally:
            self._drain()
            self._beat_stop.set()
            beater.join(timeout=5)
            with contextlib.suppress(redis.RedisError):
                self.client.delete(keys.heartbeat_key(self.name))

    def _drain(self) -> None:
        deadline = time.monotonic() + self.settings.shutdown_grace_s
        while time.monotonic() < deadline:
            with self._mutex:
                threads = list(self._threads.values())
            if not threads:
                return
            threads[0].join(timeout=max(0.0, deadline - time.monotonic()))
        with self._mutex:
            left = list(self._inflight.values())
            self._released.update(e.id for e in left)
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
                        idle=self._visibility_ms,
                        retrycount=max(0, e.deliveries - 1),
                        justid=True,
                    )
                    if e.job_id is not None:
                        pipe.delete(keys.lock_key(e.job_id))
                pipe.execute()
            except redis.RedisError as exc:
                log.warning("could not release %d job(s): %s", len(left), exc)
            for e in left:
                self._finish(e, OUTCOME_RELEASED)
            log.warning("released %d unfinished job(s) for other workers", len(left))

    @property
    def inflight(self) -> list[str]:
        """Entry ids being worked on now."""
        with self._mutex:
            return list(self._inflight)


def _jitter() -> float:
    return (time.monotonic_ns() % 1000) / 1000.0


def _short(exc: BaseException, limit: int = 500) -> str:
    text = str(exc).replace("\n", "; ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _peek(raw: str) -> tuple[str | None, str | None, str | None]:
    """Best-effort job id, source and reply stream of a payload that may be invalid."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None, None, None
    if not isinstance(data, dict):
        return None, None, None
    job_id = data.get("job_id")
    source = data.get("source")
    reply = data.get("reply_to")
    ok_id = isinstance(job_id, str) and re.match(JOB_ID_PATTERN, job_id) is not None
    ok_reply = isinstance(reply, str) and re.match(REPLY_PATTERN, reply) is not None
    return (
        job_id if ok_id else None,
        source[:MAX_SOURCE_CHARS] if isinstance(source, str) else None,
        reply if ok_reply else None,
    )


__all__ = [
    "ClipScorer",
    "Job",
    "JobOptions",
    "JobRejected",
    "QueueFull",
    "QueueStats",
    "Worker",
    "WorkerHooks",
    "aggregate",
    "backlog",
    "connect",
    "enqueue",
    "ensure_group",
    "get_result",
    "heartbeat_is_fresh",
    "new_job_id",
    "queue_stats",
    "read_heartbeat",
    "trim_jobs",
    "wait_results",
]
