"""`restrav submit` and `restrav worker`: the Redis Streams clip queue from the command line.

The worker is a composition root: it builds the model once, owns SIGTERM/SIGINT
(stop reading, finish or release the current jobs, exit 0) and the metrics
endpoint. Test hooks are read from the environment only when RESTRAV_TESTING=1
(see :func:`testing_hooks`); they are off in every normal run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from redis.exceptions import RedisError

from monitor import keys
from monitor.config import QueueSettings, Settings, load_settings
from monitor.errors import ConfigError, RestravError
from monitor.media.fetch import SourcePolicy
from monitor.metrics import QueueMetrics, without_created_series
from monitor.queue import (
    JOB_ID_PATTERN,
    ClipScorer,
    Job,
    JobOptions,
    Worker,
    WorkerHooks,
    connect,
    default_worker_name,
    enqueue,
    ensure_group,
    new_job_id,
    wait_results,
    worker_health,
)
from monitor.redaction import redact_url
from monitor.redis_conn import rediscover
from monitor.redis_faults import NotReplicated, redis_unavailable, refusal_code

from .common import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    EXIT_USAGE,
    add_settings_args,
    build_classifier,
    build_embedder,
    decode_limits,
    exit_now,
    positive_int,
    settings_from_args,
)

log = logging.getLogger("restrav.queue")


def job_id_arg(text: str) -> str:
    """argparse type for --job-id: the queue's job id pattern, else a usage error (exit 2)."""
    if re.match(JOB_ID_PATTERN, text) is None:
        raise argparse.ArgumentTypeError(
            f"{text!r}: use 1-128 letters, digits and . _ : - (starting with a letter or digit)"
        )
    return text

SUBMIT_DESCRIPTION = """\
Enqueue clips on the Redis clip queue (stream restrav:jobs). Each SOURCE is a
local path (made absolute; workers must see the same path) or an http(s) URL
(workers accept URLs only where queue.allowed_url_schemes allows them).

Prints one line per job: {"job_id", "entry_id", "source"}. With --wait, prints
each result (JSON, one line) as it arrives instead, and exits 1 if any job
ended in an error or did not finish within --timeout.
"""

WORKER_DESCRIPTION = """\
Consume the clip queue: score every job's whole clip (every window along it,
the paper's centred window and a clip-level aggregate), write the result to
restrav:results:{JOB_ID} (with a TTL) and the results stream, then acknowledge.
Workers on any number of machines share the queue through a consumer group;
jobs of a worker that dies are taken over after queue.visibility_timeout_s.

Give each worker process a distinct, stable --name (default: the host name, one
worker per container): on restart a worker first finishes its own pending jobs.

SIGTERM or Ctrl-C: stop reading, finish current jobs within
queue.shutdown_grace_s (or release them to other workers), exit 0.

--check exits 0 when the worker named --name has a fresh heartbeat, its read loop
works and the consumer group exists; 1 otherwise, with the reason (a container
health check).
"""


def _add_redis_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--redis-url",
        metavar="URL",
        help="redis://[:password@]host:port/db, or Sentinel: "
        "redis+sentinel://[:password@]host:port[,host:port...]/SERVICE[/DB], or Cluster: "
        "redis+cluster://[:password@]host:port[,host:port...] "
        "(default: redis.url from settings, RESTRAV_REDIS__URL)",
    )


def register(sub: Any) -> None:
    """Add the `submit` and `worker` subcommands."""
    s: argparse.ArgumentParser = sub.add_parser(
        "submit",
        help="enqueue clips on the Redis clip queue (optionally wait for results)",
        description=SUBMIT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument("sources", nargs="+", metavar="PATH_OR_URL", help="clips to score")
    s.add_argument("--wait", action="store_true", help="print results as they arrive")
    s.add_argument(
        "--timeout", type=float, default=3600.0, metavar="S", help="with --wait (default 3600 s)"
    )
    s.add_argument(
        "--job-id", type=job_id_arg, metavar="ID",
        help="idempotency key (only with one source): letters, digits and . _ : -, up to 128",
    )
    s.add_argument(
        "--no-windows", action="store_true", help="score only the centred window (faster)"
    )
    s.add_argument(
        "--hop", type=positive_int, default=1, metavar="K", help="one window every K samples"
    )
    s.add_argument(
        "--classifier-name",
        metavar="NAME",
        help="a classifier the workers know by name (queue.classifiers)",
    )
    s.add_argument("--config", type=Path, metavar="FILE", help="YAML settings file")
    _add_redis_args(s)
    s.set_defaults(func=run_submit)

    w: argparse.ArgumentParser = sub.add_parser(
        "worker",
        help="consume the Redis clip queue and score clips",
        description=WORKER_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    w.add_argument("--name", metavar="NAME", help="consumer name (default: host name)")
    w.add_argument("--concurrency", type=int, metavar="N", help="jobs at once (default 1)")
    w.add_argument(
        "--metrics-port", type=int, metavar="PORT", help="serve Prometheus metrics on this port"
    )
    w.add_argument("--check", action="store_true", help="health check: exit 0 if alive")
    _add_redis_args(w)
    add_settings_args(w)
    w.set_defaults(func=run_worker)


def _settings(args: argparse.Namespace, with_model: bool) -> Settings:
    overrides: dict[str, Any] = {}
    if args.redis_url:
        overrides["redis"] = {"url": args.redis_url}
    if getattr(args, "concurrency", None):
        overrides["queue"] = {"concurrency": args.concurrency}
    base = settings_from_args(args) if with_model else load_settings(args.config)
    if not overrides:
        return base
    data = base.model_dump()
    for section, values in overrides.items():
        data[section] = {**data[section], **values}
    return load_settings(None, **data)


def _redis(settings: Settings) -> Any:
    r = settings.redis
    if r.url is None:
        raise ConfigError(
            "no Redis configured: pass --redis-url or set RESTRAV_REDIS__URL (or redis.url)"
        )
    # a frozen or partitioned Redis is a timeout, not a hang: longer than any blocking call
    blocking_s = max(settings.queue.block_ms / 1000, 1.0, r.wait_timeout_s)
    return connect(r.url.get_secret_value(), r.connect_timeout_s,
                   read_timeout_s=r.connect_timeout_s + blocking_s + 1.0)


def _source(text: str) -> str:
    return text if "://" in text else str(Path(text).expanduser().absolute())


SUBMIT_ATTEMPTS = 5
"""Tries per job while Redis is unreachable, refuses writes (a failover under way) or
its replicas do not acknowledge the job (``redis.wait_replicas``): about 7.5 s."""


def _enqueue_retrying(client: Any, job: Job, settings: Settings) -> str:
    """Enqueue ``job``, trying again under the same job id (answered once whatever
    number of entries it gets) while Redis is unavailable or the replicas did not
    acknowledge it; the last error propagates: the job is then not reported enqueued."""
    durability = settings.redis.durability()
    for attempt in range(SUBMIT_ATTEMPTS):
        try:
            return enqueue(client, job, settings.queue, durability)
        except RedisError as exc:
            if not redis_unavailable(exc) or attempt == SUBMIT_ATTEMPTS - 1:
                raise
            if isinstance(exc, NotReplicated):  # maybe a deposed primary: ask again
                rediscover(client)
            # INFO: the outcome is what the user needs (the job enqueued, or one line
            # saying Redis is unavailable); -v shows each attempt
            log.info("job %s not enqueued yet (%s); trying again", job.job_id,
                     refusal_code(exc) or type(exc).__name__)
            time.sleep(min(4.0, 0.5 * 2**attempt))
    raise AssertionError("unreachable")


def run_submit(args: argparse.Namespace) -> int:
    """Enqueue the sources; with --wait print results as they arrive."""
    if args.job_id and len(args.sources) != 1:
        print("restrav submit: --job-id needs exactly one source", file=sys.stderr)
        return EXIT_USAGE
    settings = _settings(args, with_model=False)
    client = _redis(settings)
    options = JobOptions(
        windows=not args.no_windows, hop=args.hop, classifier=args.classifier_name
    )
    reply_to = f"{keys.REPLY_PREFIX}{new_job_id()}" if args.wait else None
    ids: set[str] = set()
    try:
        for text in args.sources:
            job = Job(
                job_id=args.job_id or new_job_id(),
                source=_source(text),
                options=options,
                reply_to=reply_to,
            )
            entry_id = _enqueue_retrying(client, job, settings)
            ids.add(job.job_id)
            line = {"job_id": job.job_id, "entry_id": entry_id, "source": redact_url(job.source)}
            print(json.dumps(line), file=sys.stderr if args.wait else sys.stdout, flush=True)
    except RestravError as exc:
        print(f"restrav submit: {exc.message}", file=sys.stderr)
        return EXIT_SOME_FAILED
    if reply_to is None:
        return EXIT_OK
    failed = 0
    seen = 0
    try:
        for result in wait_results(client, reply_to, ids, args.timeout):
            seen += 1
            failed += 0 if result.get("ok") else 1
            sys.stdout.write(json.dumps(result) + "\n")
            sys.stdout.flush()
    finally:
        client.delete(reply_to)
    if seen < len(ids):
        print(
            f"restrav submit: {len(ids) - seen} job(s) unfinished after {args.timeout:.0f} s; "
            "they stay queued (results will be in restrav:results:{JOB_ID})",
            file=sys.stderr,
        )
        return EXIT_SOME_FAILED
    return EXIT_SOME_FAILED if failed else EXIT_OK


def testing_hooks(env: dict[str, str]) -> WorkerHooks:
    """Test-only hooks, active only when ``RESTRAV_TESTING=1``:

    * ``RESTRAV_TESTING_CRASH_JOB=ID``: the worker process exits at once
      (``os._exit(70)``, no cleanup, like a segfault) when it starts scoring job ``ID``;
    * ``RESTRAV_TESTING_SLOW_JOB=ID:SECONDS`` (``*`` for every job): sleep that long
      before scoring a job's first delivery, to make it slow enough to kill mid-way
      (a redelivery runs at normal speed).
    """
    if env.get("RESTRAV_TESTING") != "1":
        return WorkerHooks()
    crash = env.get("RESTRAV_TESTING_CRASH_JOB")
    slow_id, _, slow_s = env.get("RESTRAV_TESTING_SLOW_JOB", "").partition(":")
    delay = float(slow_s) if slow_s else 0.0

    def before_score(job: Job, attempt: int) -> None:
        if crash and job.job_id == crash:
            log.error("RESTRAV_TESTING_CRASH_JOB: crashing on job %s", job.job_id)
            os._exit(70)
        if delay and attempt == 1 and slow_id in ("*", job.job_id):
            time.sleep(delay)

    return WorkerHooks(before_score=before_score)


def source_policy(q: QueueSettings) -> SourcePolicy:
    """What the worker's jobs may name as their source, from the ``queue`` settings."""
    return SourcePolicy(
        allow_local_paths=q.allow_local_paths,
        local_roots=q.local_roots,
        allowed_url_schemes=tuple(s.lower() for s in q.allowed_url_schemes),
        allowed_url_hosts=q.allowed_url_hosts,
        allow_private_addresses=q.allow_private_addresses,
        max_download_bytes=q.max_download_bytes,
        download_timeout_s=q.download_timeout_s,
        download_deadline_s=q.download_deadline_s,
    )


def run_worker(args: argparse.Namespace) -> int:
    """Run a worker until SIGTERM/SIGINT (or check another's health with --check)."""
    settings = _settings(args, with_model=True)
    name = args.name or default_worker_name()
    client = _redis(settings)
    if args.check:
        healthy, line = worker_health(
            client, name, settings.queue.group, settings.queue.heartbeat_interval_s
        )
        print(line, file=sys.stdout if healthy else sys.stderr)
        return EXIT_OK if healthy else EXIT_SOME_FAILED
    q = settings.queue
    embedder = build_embedder(settings)
    # every job: a wall-time deadline and a memory bound, checked while decoding
    limits = replace(
        decode_limits(settings), job_timeout_s=q.job_timeout_s, max_rss_bytes=q.max_rss_bytes
    )
    scorer = ClipScorer(
        embedder,
        build_classifier(settings, embedder.embedding_dim),
        limits,
        dict(q.classifiers),
        max_hop=q.max_hop,
    )
    policy = source_policy(q)
    without_created_series()
    registry = CollectorRegistry()
    metrics = QueueMetrics(registry)
    if args.metrics_port:
        start_http_server(args.metrics_port, registry=registry)
    try:
        worker = Worker(
            client,
            q,
            scorer,
            metrics,
            name=name,
            policy=policy,
            max_file_bytes=limits.max_file_bytes,
            hooks=testing_hooks(dict(os.environ)),
            durability=settings.redis.durability(),
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    ensure_group(client, q.group)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.warning("signal %d: finishing current jobs, then exiting", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"worker {name}: ready", file=sys.stderr, flush=True)
    worker.run(stop)
    if worker.busy:
        # a job released at the grace deadline is still inside its forward pass
        print(f"worker {name}: exiting while a released job is still computing "
              "(not waited for)", file=sys.stderr, flush=True)
        exit_now(EXIT_OK)
    return EXIT_OK
