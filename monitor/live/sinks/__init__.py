"""Sinks for live scores: Redis, stdout JSON lines, memory (tests), fan-out, and the
in-memory log of recent events (the operator page's event log).

See :mod:`monitor.live.sinks.base` for the contract.
"""

from __future__ import annotations

from .base import BufferedSink, Sink, SinkUnavailable
from .eventlog import EventLog
from .fanout import FanoutSink
from .fields import score_fields
from .memory import MemorySink
from .redis import RedisSink
from .stdout import StdoutSink

__all__ = [
    "BufferedSink",
    "EventLog",
    "FanoutSink",
    "MemorySink",
    "RedisSink",
    "Sink",
    "SinkUnavailable",
    "StdoutSink",
    "score_fields",
]
