"""Sinks for live scores: Redis, stdout JSON lines, memory (tests), fan-out.

See :mod:`monitor.live.sinks.base` for the contract.
"""

from __future__ import annotations

from .base import BufferedSink, Sink, SinkUnavailable
from .fanout import FanoutSink
from .memory import MemorySink
from .redis import RedisSink, score_fields
from .stdout import StdoutSink

__all__ = [
    "BufferedSink",
    "FanoutSink",
    "MemorySink",
    "RedisSink",
    "Sink",
    "SinkUnavailable",
    "StdoutSink",
    "score_fields",
]
