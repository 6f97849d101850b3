"""Every Prometheus metric of restrav-monitor, defined on an injected registry.

This module decides nothing: components receive a metrics object and
increment, set or observe. Conventions: ``restrav_`` prefix, base units
(``_seconds``, ``_bytes``), ``_total`` on counters, histograms for latencies,
bounded labels (stream id yes; clip, job or frame ids never).

Each area has its own class so that tests build only what they use on a fresh
``CollectorRegistry``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
JOB_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)


# --- streaming service (live feeds, engine, sinks) -------------------------------------


class StreamMetrics:
    """Metrics of the streaming service: sources, sampler, engine, sinks."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry


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


# --- WebRTC (WHIP / WHEP) ---------------------------------------------------------------


class WebRTCMetrics:
    """Metrics of WebRTC sessions (WHIP publishers, WHEP pulls)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
