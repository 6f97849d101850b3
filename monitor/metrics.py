"""Every Prometheus metric of restrav-monitor, defined on an injected registry.

This module decides nothing: components receive a metrics object and
increment, set or observe. Conventions: ``restrav_`` prefix, base units
(``_seconds``, ``_bytes``), ``_total`` on counters, histograms for latencies,
bounded labels (stream id yes; clip, job or frame ids never).

Each area has its own class so that tests build only what they use on a fresh
``CollectorRegistry``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
JOB_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)


# --- streaming service (live feeds, engine, sinks) -------------------------------------


class StreamMetrics:
    """Metrics of the streaming service: sources, sampler, engine, sinks."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry


# --- clip job queue ----------------------------------------------------------------------


class QueueMetrics:
    """Metrics of the Redis Streams clip queue and its workers."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry


# --- WebRTC (WHIP / WHEP) ---------------------------------------------------------------


class WebRTCMetrics:
    """Metrics of WebRTC sessions (WHIP publishers, WHEP pulls)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
