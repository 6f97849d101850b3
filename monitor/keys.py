"""Every Redis key name of restrav-monitor, in one place (DESIGN.md conventions).

The ``{...}`` around a stream id is a Redis Cluster hash tag: it keeps one
stream's keys in one slot, so the score append and the ``latest`` update can run
in one MULTI/EXEC. Stream ids are validated (letters, digits, ``_ . -``) before
they reach these functions.
"""

from __future__ import annotations

PREFIX = "restrav"
EVENTS = f"{PREFIX}:events"
"""Alert events of every stream (a capped Redis stream)."""
STREAMS_DESIRED = f"{PREFIX}:streams"
"""Hash: stream id -> JSON spec of the desired set of live streams (credentials stripped)."""


def stream_scores(stream_id: str) -> str:
    """The capped score stream of one live feed: ``restrav:{stream}:scores``."""
    return f"{PREFIX}:{{{stream_id}}}:scores"


def stream_latest(stream_id: str) -> str:
    """The hash with the latest score of one live feed: ``restrav:{stream}:latest``."""
    return f"{PREFIX}:{{{stream_id}}}:latest"
