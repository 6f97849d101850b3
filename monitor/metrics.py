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
    """Metrics of the Redis Streams clip queue and its workers."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry


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
