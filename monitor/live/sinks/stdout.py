"""JSON lines on stdout (or any text stream): the sink of a laptop without Redis.

One object per line: a score (``"type": "score"``, the fields of
:meth:`~monitor.live.engine.StreamScore.to_json`) or an alert event
(``"type": "event"``: alerts, who changed a stream). State changes are not written
here (stderr logs them; ``restrav:events`` and the page's event log list them): the
lines stay scores and the events a person acts on.
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

from ...types import StreamScore
from ..alerts import Event, StateEvent
from .base import BufferedSink, Item


class StdoutSink(BufferedSink):
    """Writes JSON lines to ``stream`` (default ``sys.stdout``); scores carry their 21
    features unless ``features=False`` (without a classifier they are all there is)."""

    name = "stdout"

    def __init__(self, stream: TextIO | None = None, features: bool = True, **kw: Any) -> None:
        super().__init__(**kw)
        self.stream = stream
        self.features = features

    def publish_event(self, event: Event) -> None:
        """Queue an alert's or a control event; state changes are not written here."""
        if not isinstance(event, StateEvent):
            super().publish_event(event)

    async def write(self, items: list[Item]) -> None:
        """Write and flush one line per item."""
        out = self.stream or sys.stdout
        lines = []
        for it in items:
            if isinstance(it, StreamScore):
                lines.append(json.dumps({"type": "score", **it.to_json(self.features)}))
            else:
                lines.append(json.dumps({"type": "event", **it.to_json()}))
        out.write("\n".join(lines) + "\n")
        out.flush()
