"""Every Prometheus metric of restrav-monitor, defined on an injected registry.

This module decides nothing: components receive a metrics object and
increment, set or observe. Conventions: ``restrav_`` prefix, base units
(``_seconds``, ``_bytes``), ``_total`` on counters, histograms for latencies,
bounded labels (stream id yes; clip, job or frame ids never).

Each area has its own class so that tests build only what they use on a fresh
``CollectorRegistry``.

The module is kept whole, however long: one file lists every metric the service
exports, which is what an operator writing a dashboard or an alert looks for.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections.abc import Callable, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.values import MutexValue

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
JOB_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)


def without_created_series() -> None:
    """Stop exporting the ``*_created`` series of counters and histograms, process-wide
    (prometheus_client's switch; call before the first scrape). No dashboard, alert or
    script reads them, and at 300 streams they were a quarter of /metrics' lines and
    about 60 % of its generation time (BENCHMARKS.md, issue 25)."""
    disable_created_metrics()  # type: ignore[no-untyped-call]


class Exposition:
    """The Prometheus text of ``registry``, made off the event loop: in a worker thread
    (made on the loop it took 250-600 ms at 300 streams, and every stream's frames
    waited), one at a time: a scrape that arrives while one is being made gets that one
    (prometheus_client's collection is thread-safe; the values are of that moment)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._making: asyncio.Future[bytes] | None = None

    async def text(self) -> bytes:
        """The exposition (bytes of ``generate_latest``)."""
        if self._making is None:
            self._making = asyncio.ensure_future(
                asyncio.to_thread(generate_latest, self.registry))
            self._making.add_done_callback(self._made)
        # shielded: a scrape that disconnects does not cancel the others' text
        return await asyncio.shield(self._making)

    def _made(self, fut: asyncio.Future[bytes]) -> None:
        if self._making is fut:
            self._making = None


def adder(counter: Counter) -> Callable[[float], None]:
    """``counter.inc`` for amounts known to be >= 0 (``counter`` a child, or a counter
    without labels), without its checks per call: the in-process value's own ``inc``
    (one lock; the same exposition), or ``counter.inc`` where prometheus_client keeps it
    otherwise (multiprocess mode, another layout of its internals). For counts added
    per sample of every stream (the stream task's frames and samples)."""
    value = getattr(counter, "_value", None)
    if type(value) is MutexValue and hasattr(value, "_lock") and hasattr(value, "_value"):
        return value.inc
    return counter.inc


def observe_each(histogram: Histogram, amounts: Sequence[float]) -> None:
    """``histogram.observe(a)`` for each of ``amounts`` in order (``histogram`` a child,
    or a histogram without labels), in one pass: the same bucket counts and the same
    ``_sum`` float (added in the same order), with one lock per bucket touched instead
    of two per observation (the engine observes every sample's queue latency). Values
    the in-process histogram of prometheus_client does not hold (multiprocess mode, or
    another layout of its internals) are observed one by one."""
    total = getattr(histogram, "_sum", None)
    buckets = getattr(histogram, "_buckets", None)
    bounds = getattr(histogram, "_upper_bounds", None)
    if (type(total) is not MutexValue or not hasattr(total, "_lock")
            or not hasattr(total, "_value") or buckets is None or bounds is None
            or not all(type(b) is MutexValue for b in buckets)):
        for a in amounts:
            histogram.observe(a)
        return
    counts: dict[int, int] = {}
    for a in amounts:
        if a == a:  # NaN: observe() counts it in no bucket
            i = bisect.bisect_left(bounds, a)
            counts[i] = counts.get(i, 0) + 1
    with total._lock:
        for a in amounts:
            total._value += a
    for i, c in counts.items():
        buckets[i].inc(c)


# --- streaming service (live feeds, engine, sinks) -------------------------------------


STREAM_STATES = ("starting", "running", "stalled", "reconnecting", "paused", "stopped", "failed")
"""Every state a live stream can be in (``restrav_stream_state{state}``)."""
STAGES = ("queue", "convert", "embed", "geometry", "classify", "sink")
"""Per-stage latency labels of ``restrav_stage_latency_seconds``."""
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
STAGE_BUCKETS_S = (0.0005, 0.001, 0.0025, *LATENCY_BUCKETS_S)


class StreamMetrics:
    """Metrics of the streaming service: sources, sampler, engine, sinks, API.

    Every name, with its labels:

    - ``restrav_stream_frames_decoded_total{stream}``: frames received from the source.
    - ``restrav_stream_frames_sampled_total{stream}``: samples on the 11.5 Hz grid.
    - ``restrav_stream_frames_dropped_total{stream,reason}``: ``buffer_full`` (decode
      buffer kept the latest), ``overload`` (a sample of a skipped window),
      ``convert_error`` (a frame that could not be converted to RGB), ``shutdown``
      (submitted while draining or after removal), ``yield`` (a sample of a window the
      stream yielded to others under overload).
    - ``restrav_stream_windows_scored_total{stream}``
    - ``restrav_stream_windows_skipped_total{stream,reason}``: ``overload`` (the
      backstop: a stream's backlog or the queue was full), ``yield`` (whole windows a
      stream yielded while streams take turns: degraded, not failing).
    - ``restrav_stream_yielding{stream}``: 1 while the stream yields its turn.
    - ``restrav_stream_gaps_total{stream,reason}``: windows ended by ``pts_jump``,
      ``pts_backwards``, ``reconnect``, ``stall``, ``drop`` (frames dropped by the
      decode buffer), ``pause``.
    - ``restrav_stream_reconnects_total{stream}``
    - ``restrav_stream_source_errors_total{stream,code}``
    - ``restrav_stream_state{stream,state}``: 1 for the current state, 0 for the others.
    - ``restrav_stream_state_events_suppressed_total{stream}``: state changes not put on
      ``restrav:events`` (the stream's budget, ``serve.sinks.state_events_*``, ran out).
    - ``restrav_stream_last_score{stream}``: the last P(AI) (absent before the first).
    - ``restrav_stream_last_score_timestamp_seconds{stream}``: Unix time of it.
    - ``restrav_stream_alert_active{stream}``: 1 while the stream is in alert (0 while
      paused, stopped, failed or waiting for a WHIP publisher).
    - ``restrav_stream_awaiting_publisher{stream}``: 1 while a WHIP stream waits for its
      publisher (its state is ``reconnecting``, which is then normal).
    - ``restrav_stream_alerts_total{stream}``: alerts entered.
    - ``restrav_stream_e2e_latency_seconds{stream}``: histogram, frame arrival to score
      written by the sink.
    - ``restrav_stage_latency_seconds{stage}``: histogram per stage (queue, convert,
      embed, geometry, classify, sink).
    - ``restrav_engine_batch_size``: histogram of frames per device batch.
    - ``restrav_engine_queue_samples``: samples waiting for the device worker.
    - ``restrav_engine_streams_yielding``: streams waiting for their turn on the device.
    - ``restrav_engine_stream_slots``: streams that may run at once (the number of
      streams while the engine has not been overloaded).
    - ``restrav_engine_capacity_samples_per_second``: the worker's capacity at its batch
      limit, from the measured batch cost (0 before the first batch).
    - ``restrav_engine_batch_limit``, ``restrav_engine_queue_limit``: the batch limit
      and queue bound in force (derived unless set).
    - ``restrav_engine_device_memory_bytes{device,kind}``: ``allocated`` / ``reserved``
      (CUDA), ``rss`` (process resident memory on CPU).
    - ``restrav_sink_writes_total{sink,outcome}``: batches ``ok``, ``error`` (backend
      unreachable or refusing writes: an outage) or ``failed`` (any other error: a
      command the backend rejects, a bug); both kinds of failed batch are retried.
    - ``restrav_sink_buffered{sink}``: items waiting in a sink's buffer.
    - ``restrav_sink_dropped_total{sink,reason}``: ``buffer_full``.
    - ``restrav_api_requests_total{route,code}``: control-plane requests by status.
    - ``restrav_serve_ready``: 1 when /readyz would answer 200 (evaluated at every scrape).
    - ``restrav_stale_writes_refused_total{stream}``: score/latest/event writes Redis
      refused because their fencing token was stale (another replica owns the stream).

    Replicas with leases (``serve.cluster.enabled``), each counted by the replica itself:

    - ``restrav_replica_owned_streams``: streams whose lease this replica holds.
    - ``restrav_replica_capacity_streams``: streams this replica may run.
    - ``restrav_lease_acquisitions_total``: leases taken (new fencing tokens).
    - ``restrav_lease_renewals_total``: leases renewed.
    - ``restrav_lease_losses_total{reason}``: ``taken`` (renewal found another owner or
      the lease gone) or ``refused`` (a write was refused as stale).
    - ``restrav_handovers_total{reason}``: streams this replica gave up on purpose:
      ``rebalance``, ``drain``, ``removed``.
    - ``restrav_cluster_unowned_streams``: desired streams without an owner, as this
      replica last saw them.
    - ``restrav_cluster_replicas``: live replicas, as this replica last saw them.
    - ``restrav_cluster_errors_total``: coordinator ticks that failed on Redis.
    - ``restrav_desired_set_restored_total``: times this replica found the desired set
      gone from Redis with its mark (Redis lost its data) and wrote back the set it
      last knew.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        self.frames_decoded = Counter(
            "restrav_stream_frames_decoded_total", "Frames received from the source",
            ["stream"], registry=r,
        )
        self.frames_sampled = Counter(
            "restrav_stream_frames_sampled_total", "Samples taken on the 11.5 Hz grid",
            ["stream"], registry=r,
        )
        self.frames_dropped = Counter(
            "restrav_stream_frames_dropped_total", "Frames or samples dropped, by reason",
            ["stream", "reason"], registry=r,
        )
        self.windows_scored = Counter(
            "restrav_stream_windows_scored_total", "Windows scored", ["stream"], registry=r
        )
        self.windows_skipped = Counter(
            "restrav_stream_windows_skipped_total", "Whole windows skipped, by reason",
            ["stream", "reason"], registry=r,
        )
        self.gaps = Counter(
            "restrav_stream_gaps_total", "Windows ended by a gap, by reason",
            ["stream", "reason"], registry=r,
        )
        self.reconnects = Counter(
            "restrav_stream_reconnects_total", "Source reconnect attempts", ["stream"], registry=r
        )
        self.source_errors = Counter(
            "restrav_stream_source_errors_total", "Source failures, by error code",
            ["stream", "code"], registry=r,
        )
        self.state = Gauge(
            "restrav_stream_state", "1 for the stream's current state, 0 for the others",
            ["stream", "state"], registry=r,
        )
        self.state_events_suppressed = Counter(
            "restrav_stream_state_events_suppressed_total",
            "State changes not put on restrav:events: the stream's event budget ran out",
            ["stream"], registry=r,
        )
        self.last_score = Gauge(
            "restrav_stream_last_score", "Last P(AI-generated) of the stream", ["stream"],
            registry=r,
        )
        self.last_score_ts = Gauge(
            "restrav_stream_last_score_timestamp_seconds", "Unix time of the last score",
            ["stream"], registry=r,
        )
        self.alert_active = Gauge(
            "restrav_stream_alert_active", "1 while the stream is in alert", ["stream"],
            registry=r,
        )
        self.awaiting_publisher = Gauge(
            "restrav_stream_awaiting_publisher",
            "1 while a WHIP stream waits for its publisher (state reconnecting, normal)",
            ["stream"], registry=r,
        )
        self.alerts = Counter(
            "restrav_stream_alerts_total", "Alerts entered", ["stream"], registry=r
        )
        self.e2e_latency = Histogram(
            "restrav_stream_e2e_latency_seconds",
            "Frame arrival to score written by the sink",
            ["stream"], buckets=LATENCY_BUCKETS_S, registry=r,
        )
        self.stage_latency = Histogram(
            "restrav_stage_latency_seconds", "Latency of one pipeline stage",
            ["stage"], buckets=STAGE_BUCKETS_S, registry=r,
        )
        self.batch_size = Histogram(
            "restrav_engine_batch_size", "Frames per device batch", buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_samples = Gauge(
            "restrav_engine_queue_samples", "Samples waiting for the device worker", registry=r
        )
        self.stream_yielding = Gauge(
            "restrav_stream_yielding", "1 while the stream yields its turn on the device",
            ["stream"], registry=r,
        )
        self.streams_yielding = Gauge(
            "restrav_engine_streams_yielding", "Streams waiting for their turn on the device",
            registry=r,
        )
        self.stream_slots = Gauge(
            "restrav_engine_stream_slots", "Streams that may run on the device at once",
            registry=r,
        )
        self.capacity = Gauge(
            "restrav_engine_capacity_samples_per_second",
            "Samples per second the device worker sustains (measured batch cost)", registry=r,
        )
        self.batch_limit = Gauge(
            "restrav_engine_batch_limit", "Frames per device batch at most", registry=r
        )
        self.queue_limit = Gauge(
            "restrav_engine_queue_limit", "Samples the engine queue holds at most", registry=r
        )
        self.device_memory = Gauge(
            "restrav_engine_device_memory_bytes", "Device memory in use",
            ["device", "kind"], registry=r,
        )
        self.sink_writes = Counter(
            "restrav_sink_writes_total", "Sink write batches, by outcome",
            ["sink", "outcome"], registry=r,
        )
        self.sink_buffered = Gauge(
            "restrav_sink_buffered", "Items waiting in a sink buffer", ["sink"], registry=r
        )
        self.sink_dropped = Counter(
            "restrav_sink_dropped_total", "Items a sink dropped, by reason",
            ["sink", "reason"], registry=r,
        )
        self.api_requests = Counter(
            "restrav_api_requests_total", "Control-plane requests, by route and status",
            ["route", "code"], registry=r,
        )
        self.ready = Gauge(
            "restrav_serve_ready", "1 when /readyz would answer 200 (evaluated at every scrape)",
            registry=r,
        )
        self.stale_writes_refused = Counter(
            "restrav_stale_writes_refused_total",
            "Writes Redis refused because their fencing token was stale", ["stream"], registry=r,
        )
        self.owned_streams = Gauge(
            "restrav_replica_owned_streams", "Streams whose lease this replica holds", registry=r
        )
        self.capacity_streams = Gauge(
            "restrav_replica_capacity_streams", "Streams this replica may run", registry=r
        )
        self.lease_acquisitions = Counter(
            "restrav_lease_acquisitions_total", "Stream leases taken", registry=r
        )
        self.lease_renewals = Counter(
            "restrav_lease_renewals_total", "Stream leases renewed", registry=r
        )
        self.lease_losses = Counter(
            "restrav_lease_losses_total", "Stream leases lost, by reason", ["reason"], registry=r
        )
        self.handovers = Counter(
            "restrav_handovers_total", "Streams given up on purpose, by reason", ["reason"],
            registry=r,
        )
        self.unowned_streams = Gauge(
            "restrav_cluster_unowned_streams", "Desired streams without an owner", registry=r
        )
        self.replicas = Gauge("restrav_cluster_replicas", "Live serve replicas", registry=r)
        self.cluster_errors = Counter(
            "restrav_cluster_errors_total", "Coordinator ticks that failed on Redis", registry=r
        )
        self.desired_set_restored = Counter(
            "restrav_desired_set_restored_total",
            "Desired sets found lost with Redis' data and written back by this replica",
            registry=r,
        )

    def set_state(self, stream: str, state: str, awaiting_publisher: bool = False) -> None:
        """Set ``restrav_stream_state`` to 1 for ``state`` and 0 for the others, and
        ``restrav_stream_awaiting_publisher`` (a WHIP stream with no publisher)."""
        for s in STREAM_STATES:
            self.state.labels(stream, s).set(1.0 if s == state else 0.0)
        self.awaiting_publisher.labels(stream).set(1.0 if awaiting_publisher else 0.0)

    def forget_stream(self, stream: str) -> None:
        """Drop the per-stream gauges of a removed stream (counters stay)."""
        for s in STREAM_STATES:
            _remove(self.state, stream, s)
        for g in (self.last_score, self.last_score_ts, self.alert_active,
                  self.awaiting_publisher, self.stream_yielding):
            _remove(g, stream)


def _remove(metric: Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        metric.remove(*labels)


# --- clip job queue ----------------------------------------------------------------------


class QueueMetrics:
    """Metrics of the Redis Streams clip queue and its workers.

    Gauges describe the queue as a whole (sampled by each worker from Redis);
    counters and the histogram count this process's work. ``outcome`` is one of
    ``scored``, ``error``, ``duplicate``, ``dead_lettered``, ``released``;
    ``code`` is an error reason code (a bounded set, see the README).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.lag = Gauge(
            "restrav_queue_lag",
            "Jobs in the stream not yet delivered to the consumer group.",
            registry=registry,
        )
        self.pending = Gauge(
            "restrav_queue_pending",
            "Jobs delivered to a worker and not yet acknowledged.",
            registry=registry,
        )
        self.oldest_pending_age = Gauge(
            "restrav_queue_oldest_pending_age_seconds",
            "Time since the oldest unacknowledged job was enqueued (0 when none).",
            registry=registry,
        )
        self.jobs = Counter(
            "restrav_queue_jobs_total", "Jobs finished, by outcome.", ["outcome"], registry=registry
        )
        self.errors = Counter(
            "restrav_queue_job_errors_total",
            "Jobs answered with an error result, by reason code.",
            ["code"],
            registry=registry,
        )
        self.duration = Histogram(
            "restrav_queue_job_duration_seconds",
            "Time from a job's delivery to its acknowledgement.",
            ["outcome"],
            buckets=JOB_BUCKETS_S,
            registry=registry,
        )
        self.dead_lettered = Counter(
            "restrav_queue_dead_lettered_total",
            "Jobs moved to the dead-letter stream.",
            registry=registry,
        )
        self.reclaimed = Counter(
            "restrav_queue_reclaimed_total",
            "Jobs taken over from a worker that stopped renewing them.",
            registry=registry,
        )
        self.in_progress = Gauge(
            "restrav_queue_jobs_in_progress", "Jobs this worker is working on.", registry=registry
        )
        self.redis_errors = Counter(
            "restrav_queue_redis_errors_total",
            "Redis operations that failed in the worker loop (retried with backoff).",
            registry=registry,
        )
        self.late_answers = Counter(
            "restrav_queue_late_answers_total",
            "Answers discarded because the job id was answered already or another worker "
            "took the job over (this worker held it past the visibility timeout).",
            registry=registry,
        )
        self.group_recreated = Counter(
            "restrav_queue_group_recreated_total",
            "Times the worker found the consumer group missing (Redis lost its data) "
            "and recreated it.",
            registry=registry,
        )
        self.group_missing = Gauge(
            "restrav_queue_group_missing",
            "1 when the consumer group was missing at the last check (Redis lost its data).",
            registry=registry,
        )
        self.loop_failing = Gauge(
            "restrav_queue_worker_failing",
            "1 while this worker's read loop fails on every try (see its log).",
            registry=registry,
        )


# --- WebRTC (WHIP / WHEP) ---------------------------------------------------------------


class WebRTCMetrics:
    """Metrics of WebRTC sessions (WHIP publishers, WHEP pulls).

    ``kind`` is ``whip`` or ``whep``; ``stream`` is a declared stream id.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.sessions = Gauge(
            "restrav_webrtc_sessions",
            "Open WebRTC peer connections.",
            ["kind"],
            registry=registry,
        )
        self.sessions_started = Counter(
            "restrav_webrtc_sessions_started_total",
            "WebRTC sessions set up (answer sent for WHIP, answer received for WHEP).",
            ["kind"],
            registry=registry,
        )
        self.sessions_ended = Counter(
            "restrav_webrtc_sessions_ended_total",
            "WebRTC sessions ended, by reason (deleted, idle, connect_timeout, failed, "
            "closed, shutdown).",
            ["kind", "reason"],
            registry=registry,
        )
        self.requests_rejected = Counter(
            "restrav_webrtc_requests_rejected_total",
            "WHIP/WHEP HTTP requests refused, by reason (unauthorized, bad_sdp, too_large, "
            "unknown_stream, bad_stream_id, too_many_sessions, conflict, media_type).",
            ["kind", "reason"],
            registry=registry,
        )
        self.whep_connects = Counter(
            "restrav_webrtc_whep_connects_total",
            "WHEP connection attempts, by outcome (ok, http_error, timeout, bad_answer, "
            "ice_failed).",
            ["stream", "outcome"],
            registry=registry,
        )
        self.setup_seconds = Histogram(
            "restrav_webrtc_setup_seconds",
            "From the offer to the first decoded video frame.",
            ["kind"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.frames_received = Counter(
            "restrav_webrtc_frames_received_total",
            "Decoded video frames drained from aiortc tracks.",
            ["stream"],
            registry=registry,
        )
        self.frames_dropped = Counter(
            "restrav_webrtc_frames_dropped_total",
            "Decoded video frames dropped before the engine, by reason (buffer_full, too_large).",
            ["stream", "reason"],
            registry=registry,
        )
        self.audio_tracks_ignored = Counter(
            "restrav_webrtc_audio_tracks_ignored_total",
            "Audio tracks offered by peers and answered inactive.",
            ["kind"],
            registry=registry,
        )


# --- the operator page's live event stream (/ui/events) ---------------------------------


class LiveFeedMetrics:
    """Metrics of the operator page's Server-Sent Events stream.

    ``restrav_ui_clients_dropped_total{reason}``: ``slow`` (a client whose buffer
    of ``client_buffer_messages`` filled up: it did not read), ``write_timeout``
    (stuck on one write during a drain). ``restrav_ui_clients_refused_total{reason}``:
    ``too_many`` (``max_clients`` connected), ``draining``.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.clients = Gauge(
            "restrav_ui_clients", "Connected event-stream clients.", registry=registry
        )
        self.clients_dropped = Counter(
            "restrav_ui_clients_dropped_total",
            "Event-stream clients disconnected by the server, by reason (slow, write_timeout).",
            ["reason"],
            registry=registry,
        )
        self.clients_refused = Counter(
            "restrav_ui_clients_refused_total",
            "Event-stream connections refused, by reason (too_many, draining).",
            ["reason"],
            registry=registry,
        )
        self.messages = Counter(
            "restrav_ui_messages_total",
            "Update messages broadcast (each goes to every connected client).",
            registry=registry,
        )
        self.bytes_sent = Counter(
            "restrav_ui_sent_bytes_total",
            "Bytes written to event-stream clients.",
            registry=registry,
        )


# --- evidence of flagged windows (serve.evidence) ---------------------------------------


class EvidenceMetrics:
    """Metrics of the evidence kept for flagged windows.

    - ``restrav_evidence_frames_bytes``: bytes of compressed frames retained in memory.
    - ``restrav_evidence_frames_dropped_total{reason}``: sampled frames not retained:
      ``queue_full`` (the compressors were behind), ``memory_full`` (``memory_bytes``
      reached), ``thumbnail_memory_full`` (a thumbnail over ``serve.ui``'s bounds),
      ``convert_error`` (a frame that could not be downscaled).
    - ``restrav_thumbnails_bytes``: bytes of the streams' thumbnails held in memory.
    - ``restrav_evidence_records_total``: records written.
    - ``restrav_evidence_records_dropped_total{reason}``: ``queue_full`` (the writer was
      behind: a slow disk), ``frames_missing`` (the window's frames were not all retained),
      ``write_error`` (read-only or full disk, or any OS error).
    - ``restrav_evidence_records_deleted_total{reason}``: ``age``, ``size`` (retention).
    - ``restrav_evidence_disk_bytes``: bytes of the records on disk after the last pass.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.frames_bytes = Gauge(
            "restrav_evidence_frames_bytes",
            "Bytes of compressed sampled frames retained in memory for evidence.",
            registry=registry,
        )
        self.frames_dropped = Counter(
            "restrav_evidence_frames_dropped_total",
            "Sampled frames not retained for evidence or thumbnails, by reason.",
            ["reason"],
            registry=registry,
        )
        self.thumbnails_bytes = Gauge(
            "restrav_thumbnails_bytes",
            "Bytes of the streams' latest-frame thumbnails held in memory.",
            registry=registry,
        )
        self.records = Counter(
            "restrav_evidence_records_total", "Evidence records written.", registry=registry
        )
        self.records_dropped = Counter(
            "restrav_evidence_records_dropped_total",
            "Evidence records not written, by reason (queue_full, frames_missing, write_error).",
            ["reason"],
            registry=registry,
        )
        self.records_deleted = Counter(
            "restrav_evidence_records_deleted_total",
            "Evidence records deleted by retention, by reason (age, size).",
            ["reason"],
            registry=registry,
        )
        self.disk_bytes = Gauge(
            "restrav_evidence_disk_bytes",
            "Bytes of evidence records on disk after the last retention pass.",
            registry=registry,
        )
