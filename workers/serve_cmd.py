"""`restrav serve`: the streaming monitor, one asyncio process for many live feeds.

Owns the composition (model, engine, sources, sinks, API), the signals and the
exit codes: 0 after a clean drain, 1 when the drain deadline passed with work
left, 3 for configuration or model errors (raised to the CLI). A backbone batch still
computing at the deadline cannot be interrupted: `restrav serve` then exits at once
(``os._exit``, after its sinks and logs are flushed) instead of tearing the
interpreter down under it, which killed the device thread inside torch and aborted
the process ("terminate called without an active exception", exit -6).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time
from typing import Any

import redis
from aiohttp import web
from prometheus_client import CollectorRegistry

from monitor.cluster.manager import ClusteredStreamManager
from monitor.config import ServeSettings, Settings, StreamSpec
from monitor.errors import ConfigError, InputError
from monitor.live.api import (
    ApiContext,
    ReadyCheck,
    authorize,
    create_app,
    redis_ready_check,
    resolve_token,
)
from monitor.live.conversion import TensorEmbedder
from monitor.live.engine import GIL_SWITCH_INTERVAL_S, Engine, freeze_startup_heap
from monitor.live.evidence.recorder import EvidenceRecorder
from monitor.live.http_guard import ServerLog
from monitor.live.livefeed import LiveFeed
from monitor.live.page import add_ui_routes
from monitor.live.service import RedisDesiredStore, StreamManager, validate_spec
from monitor.live.shedding import MAX_DERIVED_BATCH
from monitor.live.sinks import EventLog, FanoutSink, RedisSink, StdoutSink
from monitor.live.sinks.base import Sink, sink_ready_check
from monitor.live.solo import SoloGuard
from monitor.media.sources.rtsp import resolve_decode_backend
from monitor.metrics import (
    EvidenceMetrics,
    LiveFeedMetrics,
    StreamMetrics,
    without_created_series,
)
from monitor.redis_conn import acheck_cluster, async_redis_client, parse_cluster_url
from monitor.redis_faults import cancel_and_wait
from monitor.webrtc.hub import attach_webrtc

from .common import (
    EXIT_OK,
    EXIT_SOME_FAILED,
    add_settings_args,
    build_classifier,
    build_embedder,
    check_port_free,
    exit_now,
    settings_from_args,
)

log = logging.getLogger("restrav.serve")

HELP = "run the streaming monitor: live feeds in, rolling P(AI) per stream out"
DESCRIPTION = """\
Attach to live feeds (RTSP, HTTP/HLS, files played in real time), keep a sliding
2 s ReStraV window per stream on the device, and publish a rolling P(AI) per
stream: to Redis (restrav:{stream}:scores, restrav:{stream}:latest,
restrav:events) when redis.url is set, else as JSON lines on stdout.

WebRTC: publishers (browsers, OBS, phones) push with WHIP to POST /whip/{id}
(bearer token webrtc.whip_token, else the API token; a page to publish a camera
or screen is at /publish); streams pulled from a media server use WHEP URLs,
whep+https://[:TOKEN@]host/path.

Streams come from the config file (serve.streams) and the HTTP control API
(/streams, bearer token from serve.api.token or serve.api.token_file); the set
is kept in Redis and restored on restart. The operator page, every stream with
its live P(AI) timeline and alerts, is at http://HOST:PORT/ (it asks for the
API token once; serve.ui). /healthz, /readyz, /metrics and /openapi.json
need no token. SIGTERM or SIGINT drains: not ready, stop intake, finish in-flight
batches, flush sinks, within serve.drain_deadline_s.

Many replicas (serve.cluster.enabled, Redis required): each replica runs only
the streams whose lease it holds in Redis (restrav:{stream}:lease, renewed
every serve.cluster.renew_interval_s, TTL serve.cluster.lease_ttl_s); writes
carry the lease's fencing token and Redis refuses stale ones. New or orphaned
streams go to the replica with the most free capacity, a joining replica gets
its share gradually, and SIGTERM hands this replica's streams over. The
control API of any replica edits the shared set; GET /streams shows owners.

Example:
  restrav serve --config serve.yaml
  restrav serve --model ./dinov2-small --stream cam1=rtsp://cam.local/stream
"""


def register(sub: Any) -> None:
    """Add the `serve` subcommand."""
    p: argparse.ArgumentParser = sub.add_parser(
        "serve", help=HELP, description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", help="API bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="API port (default 8080; 0 picks a free one)")
    p.add_argument(
        "--stream", action="append", default=[], metavar="ID=URL",
        help="add a stream (repeatable), on top of serve.streams",
    )
    p.add_argument(
        "--redis-url", "--redis", dest="redis", metavar="URL",
        help="redis://[:password@]host:port/db, or Sentinel: "
        "redis+sentinel://[:password@]host:port[,host:port...]/SERVICE[/DB], or Cluster: "
        "redis+cluster://[:password@]host:port[,host:port...] "
        "(overrides redis.url; --redis is the old name)",
    )
    add_settings_args(p)
    p.set_defaults(func=run)


def _settings(args: argparse.Namespace) -> Settings:
    base = settings_from_args(args)
    serve = base.serve
    api = serve.api
    updates: dict[str, Any] = {}
    if args.host is not None:
        updates["host"] = args.host
    if args.port is not None:
        updates["port"] = args.port
    if updates:
        api = api.model_copy(update=updates)
    streams = list(serve.streams)
    for item in args.stream:
        sid, sep, url = item.partition("=")
        if not sep:
            raise ConfigError(f"--stream {item!r}: expected ID=URL")
        try:
            streams.append(StreamSpec(id=sid, url=url))
        except ValueError as exc:
            raise ConfigError(f"--stream {sid!r}: {exc}") from exc
    serve = serve.model_copy(update={"api": api, "streams": tuple(streams)})
    redis = base.redis
    if args.redis:
        from pydantic import SecretStr

        redis = redis.model_copy(update={"url": SecretStr(args.redis)})
    return base.model_copy(update={"serve": serve, "redis": redis})


def check_streams(s: ServeSettings) -> None:
    """Refuse to start (ConfigError) when streams are configured and none of them is valid;
    log each invalid one (the valid ones start, the invalid ones never will)."""
    problems = []
    for spec in s.streams:
        try:
            validate_spec(s, spec)
        except InputError as exc:
            problems.append(f"{spec.id}: {exc.message}")
    if s.streams and len(problems) == len(s.streams):
        raise ConfigError("no configured stream is valid: " + "; ".join(problems))
    for problem in problems:
        log.warning("stream %s (not started)", problem)


def listen_urls(addresses: list[Any]) -> list[str]:
    """``http://host:port`` for each socket address aiohttp bound (IPv6 in brackets)."""
    urls = []
    for addr in addresses:
        host, port = addr[0], addr[1]
        urls.append(f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}")
    return urls


async def _let_go(solo: SoloGuard | None, task: asyncio.Task[None] | None) -> None:
    """Stop renewing the single-serve key (``task``), then delete it (``solo``)."""
    if task is not None:
        await cancel_and_wait(task)  # a cancel redis-py swallowed hung the drain
    if solo is not None:
        await solo.release()
        await solo.client.aclose()


SINK_RESERVE_S = 1.0
"""Of the drain deadline, the part kept for the sinks' flush (at most a fifth of the
deadline): an engine that cannot finish in time does not leave its delivered scores
unflushed as well."""


def run(args: argparse.Namespace) -> int:
    """Run until SIGTERM/SIGINT; return the exit status."""
    settings = _settings(args)
    return asyncio.run(serve(settings, exit_process=True))


def classifier_name(settings: Settings) -> str:
    """The classifier as evidence records name it: its file name, or ``default``."""
    path = settings.classifier.path
    return path.name if path is not None else "default"


async def _check_cluster(url: str, timeout_s: float) -> None:
    """A cluster URL at start: read the slot map once. A node without cluster mode is a
    :class:`ConfigError` (exit 3, saying which URL form to use); no node answering is
    logged and ridden out like any Redis outage at start (scores buffered, /readyz 503
    until the cluster answers)."""
    client = async_redis_client(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        await acheck_cluster(client)
    except redis.ConnectionError as exc:
        log.warning("Redis Cluster unreachable at start (%s); going on: scores are buffered "
                    "and /readyz answers 503 until a node answers (check the nodes and "
                    "--redis-url)", exc)
    finally:
        await client.aclose()


async def serve(
    settings: Settings, stop: asyncio.Event | None = None,
    embedder: TensorEmbedder | None = None, exit_process: bool = False,
) -> int:
    """The service: returns the exit status after a drain (``stop`` or a signal).

    ``embedder``: the backbone to use instead of loading ``settings.model`` (a
    simulation's stand-in; the rest of the composition is the same).
    ``exit_process`` (the CLI): when the device worker is still inside a batch after
    the drain, end the process at once with the status
    (:func:`~workers.common.exit_now`) instead of
    returning; in-process callers (tests) leave it False and the worker ends after
    its batch."""
    s = settings.serve
    token = resolve_token(s.api)
    check_port_free(s.api.host, s.api.port)  # before the model load, which takes seconds
    check_streams(s)
    without_created_series()
    registry = CollectorRegistry()
    metrics = StreamMetrics(registry)
    loop = asyncio.get_running_loop()
    redis_url = settings.redis.url.get_secret_value() if settings.redis.url else None
    replica = s.cluster.replica or socket.gethostname()
    solo: SoloGuard | None = None
    if redis_url and parse_cluster_url(redis_url):  # before the model load, as below
        await _check_cluster(redis_url, settings.redis.connect_timeout_s)
    if redis_url and not s.cluster.enabled:  # before the model load: a refusal is quick
        solo = SoloGuard(async_redis_client(
            redis_url, socket_connect_timeout=settings.redis.connect_timeout_s,
            socket_timeout=settings.redis.connect_timeout_s), replica)
        try:
            await solo.acquire()
        except ConfigError:
            await solo.client.aclose()
            raise
    # renewed from now on: the model load may outlast the key's TTL
    solo_task = asyncio.create_task(solo.run(), name="solo-guard") if solo else None

    cpu_model = False  # the backbone loaded here runs on the CPU
    if embedder is None:
        log.info("loading model %s", settings.model.ref)
        try:
            loaded = await asyncio.to_thread(build_embedder, settings)
        except BaseException:  # not started: the key goes now, not after its TTL
            await _let_go(solo, solo_task)
            raise
        cpu_model = loaded.device.type == "cpu"
        if cpu_model and s.engine.max_batch is None:
            # a CPU runs at its full rate from model.batch_size (8) on; a larger batch only
            # makes each sample wait longer for its score (BENCHMARKS.md, issue 22 fourth part)
            s = s.model_copy(update={"engine": s.engine.model_copy(
                update={"max_batch": loaded.batch_size})})
        loaded.batch_size = max(loaded.batch_size, s.engine.max_batch or MAX_DERIVED_BATCH)
        embedder = loaded
    s = s.model_copy(update={"source": resolve_decode_backend(s.source, str(embedder.device))})
    decode_threads = settings.decode.threads
    if decode_threads == 0 and cpu_model:
        # one FFmpeg thread per stream on a CPU model: FFmpeg's own threads (cores + 1 per
        # stream) cost more CPU per frame and preempt the backbone's threads
        decode_threads = 1
    classifier = build_classifier(settings, embedder.embedding_dim)
    if classifier is None:
        log.warning("classifier 'none': scores carry features only (p_ai null)")
    engine = Engine(embedder, classifier, s.engine, metrics)
    engine.start(loop)

    sinks: list[Sink] = []
    redis_client: Any = None
    redis_sink: RedisSink | None = None
    if s.cluster.enabled and not redis_url:
        raise ConfigError("serve.cluster.enabled needs redis.url (leases live in Redis)")
    if redis_url:
        redis_sink = RedisSink.from_url(
            redis_url, settings.redis.connect_timeout_s, metrics=metrics,
            scores_maxlen=s.sinks.scores_maxlen, events_maxlen=s.sinks.events_maxlen,
            buffer_max=s.sinks.buffer_max, write_batch=s.sinks.write_batch,
            owner=replica, durability=settings.redis.score_durability(),
        )
        redis_client = redis_sink.client
        sinks.append(redis_sink)
    if s.sinks.stdout or (s.sinks.stdout is None and not redis_url):
        sinks.append(
            StdoutSink(metrics=metrics, buffer_max=s.sinks.buffer_max,
                       write_batch=s.sinks.write_batch)
        )
    feed = LiveFeed(s.ui, s.alerts.enter, s.alerts.leave, LiveFeedMetrics(registry))
    if s.ui.enabled:
        sinks.append(feed)
    # the operator page's event log (GET /events): every replica's events from Redis
    event_log = EventLog(client=redis_client)
    sinks.append(event_log)
    sink = FanoutSink(sinks)
    await sink.start()

    # evidence (serve.evidence.dir) and the page's thumbnails (serve.ui.thumbnails)
    evidence = EvidenceRecorder.from_settings(
        s.evidence, EvidenceMetrics(registry), ui=s.ui, replica=replica,
        classifier=classifier_name(settings) if classifier is not None else None,
        engine_backlog=s.engine.max_backlog_per_stream,
    )
    if evidence is not None:
        evidence.start()
    manager: StreamManager
    if s.cluster.enabled and redis_sink is not None:
        manager = clustered = ClusteredStreamManager(
            engine, sink, s, metrics, redis_client, replica,
            durability=settings.redis.durability(),
            decode_threads=decode_threads, max_pixels=settings.decode.max_pixels,
            evidence=evidence,
        )
        clustered.bind_sink(redis_sink)
        print(f"restrav serve: replica {replica} (leases in Redis)", file=sys.stderr, flush=True)
    else:
        store = None
        if redis_client is not None and s.persist_streams:
            store = RedisDesiredStore(redis_client)
        manager = StreamManager(
            engine, sink, s, metrics, store,
            decode_threads=decode_threads, max_pixels=settings.decode.max_pixels,
            evidence=evidence,
        )

    async def model_ready() -> tuple[bool, str]:
        return (engine.running, "" if engine.running else "device worker not running")

    checks: dict[str, ReadyCheck] = {"model": model_ready}
    if redis_client is not None and redis_sink is not None:
        checks["redis"] = redis_ready_check(redis_client, settings.redis.connect_timeout_s)
        # PING answers while writes are refused (OOM, READONLY): the sink knows better
        checks["redis_writes"] = sink_ready_check(redis_sink)
    ctx = ApiContext(manager=manager, metrics=metrics, settings=s.api, token=token,
                     ready_checks=checks, evidence=evidence, thumbnails=s.ui.thumbnails,
                     events=event_log)
    if not ctx.tokens:
        log.warning("no API token: the control API is disabled (health and metrics still served)")
        if not s.streams and not (redis_url and s.persist_streams):
            print("restrav serve: no streams and no API token, so nothing will be scored and "
                  "the operator page stays off: add streams (--stream ID=URL or "
                  "serve.streams), or set an API token to add them at runtime "
                  "(serve.api.token, serve.api.token_file or RESTRAV_SERVE__API__TOKEN)",
                  file=sys.stderr, flush=True)
    app = create_app(ctx)
    if s.ui.enabled:
        feed.statuses = lambda: [st.to_json() for st in manager.list()]
        tokens = ctx.tokens or ()
        add_ui_routes(app, feed, lambda request: authorize(request, tokens, "viewer"))
    webrtc = attach_webrtc(app, manager, settings.webrtc, registry, token)
    # malformed HTTP: one line, no request bytes (they may hold the token), counted
    server_log = ServerLog(
        on_refused=lambda code: metrics.api_requests.labels("malformed", str(code)).inc()
    )
    runner = web.AppRunner(app, access_log=None, logger=server_log)
    await runner.setup()
    site = web.TCPSite(runner, s.api.host, s.api.port)
    await site.start()
    for url in listen_urls(runner.addresses):
        print(f"restrav serve: API listening on {url}", file=sys.stderr, flush=True)

    await manager.restore(s.streams)
    # the model, torch and the app are loaded: move them out of the collector's reach, so
    # that a full collection scans only what streams allocate (pauses of 100-200 ms with
    # about 300 k tracked objects overflowed the engine queue; BENCHMARKS.md)
    freeze_startup_heap()
    # the device and host threads get the GIL back sooner from a busy event loop
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)

    stop_event = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # NotImplementedError/RuntimeError: not the main thread (tests drive `stop`)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop_event.set)
    await stop_event.wait()

    # drain: not ready, stop intake, finish in-flight batches, flush sinks, within a deadline
    deadline = time.monotonic() + s.drain_deadline_s
    ctx.draining = True
    metrics.ready.set(0.0)
    await feed.drain()  # operator pages are told, their event streams end
    print(f"restrav serve: draining (deadline {s.drain_deadline_s:.1f} s)", file=sys.stderr,
          flush=True)
    await webrtc.aclose()  # WHIP sessions end before their streams stop
    await _let_go(None, solo_task)  # not renewed while draining: a successor sees it go
    await manager.stop()
    await _let_go(solo, None)  # our streams stopped: a successor may start now
    reserve = min(SINK_RESERVE_S, 0.2 * s.drain_deadline_s)
    engine_done = await engine.drain(max(0.0, deadline - reserve - time.monotonic()))
    flushed = await sink.flush(max(0.0, deadline - time.monotonic()))
    if isinstance(manager, ClusteredStreamManager):
        n = await manager.handover()  # after the flush: our last scores land before the next owner
        print(f"restrav serve: handed over {n} streams", file=sys.stderr, flush=True)
    await sink.aclose()
    if evidence is not None:  # queued records are written (bounded by the deadline)
        await asyncio.to_thread(evidence.stop, max(1.0, deadline - time.monotonic()))
    await runner.cleanup()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(sig)
    status = EXIT_OK
    if not (engine_done and flushed):
        log.error("drain incomplete: engine %s, sinks %s", engine_done, flushed)
        status = EXIT_SOME_FAILED
    else:
        print("restrav serve: drained cleanly", file=sys.stderr, flush=True)
    if exit_process and engine.running:
        print(f"restrav serve: exiting with status {status} while the device worker is still "
              "in a batch (not waited for)", file=sys.stderr, flush=True)
        exit_now(status)
    return status
