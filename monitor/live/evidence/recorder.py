"""What the stream manager calls to keep evidence: one object per `serve`.

Contract:

* :meth:`EvidenceRecorder.watch` / :meth:`forget` start and stop retaining a stream's
  frames (a spec with ``evidence: false`` is never retained: nothing of it is kept).
  Each stream keeps ``frames_per_stream`` frames, and at least 24 + the engine's
  ``max_backlog_per_stream`` + 8: a frame is kept when it is submitted, and its window
  is scored up to that backlog later.
* :meth:`on_sample` (event loop, per submitted sample) hands the frame to the
  compressing thread; :meth:`on_score` (event loop, per scored window) asks the
  writer for a record when the window started an alert, or when its P(AI) is at or
  above ``low_threshold``, and returns the record's id at once (the record appears
  when written; a dropped one never does, and is counted). Neither blocks.
* Ids are ``<unix ms, 13 digits>-<stream>-<seq>`` (:data:`EVIDENCE_ID_PATTERN`): safe as
  one path component and as a URL segment, ordered by time.
* :meth:`record_dir` resolves an id to its folder (None for an unknown or malformed id).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...config import EvidenceSettings
from ...metrics import EvidenceMetrics
from ...types import FEATURE_NAMES, WINDOW_SAMPLES, StreamScore
from .capture import FrameCapture, SmallFrame
from .frames import FrameStore, KeptFrame
from .writer import RECORD, EvidenceRequest, EvidenceWriter

EVIDENCE_ID_PATTERN = r"^[0-9]{13}-[A-Za-z0-9][A-Za-z0-9_.-]{0,63}-[0-9]{1,20}$"
_ID = re.compile(EVIDENCE_ID_PATTERN)


class EvidenceRecorder:
    """Frame retention, the writer and their settings (see the module docstring)."""

    def __init__(self, settings: EvidenceSettings, metrics: EvidenceMetrics | None = None,
                 replica: str | None = None, classifier: str | None = None,
                 clock: Callable[[], float] = time.time, engine_backlog: int = 24) -> None:
        self.settings = settings
        self.replica = replica
        self.classifier = classifier
        # frames are kept when submitted; a window is scored up to engine_backlog samples
        # later: the ring must still hold its 24 frames then (8 more for the loop's delay)
        self.keep = max(settings.frames_per_stream, WINDOW_SAMPLES + engine_backlog + 8)
        self.store = FrameStore(self.keep, settings.stream_bytes, settings.memory_bytes)
        self.capture = FrameCapture(self.store, settings.frame_width, settings.jpeg_quality,
                                    settings.capture_queue, metrics, clock)
        self.writer = EvidenceWriter(settings, self.store, metrics, clock)
        self._watched: set[str] = set()

    @classmethod
    def from_settings(cls, settings: EvidenceSettings, metrics: EvidenceMetrics | None = None,
                      **kw: Any) -> EvidenceRecorder | None:
        """A recorder, or None when ``settings.dir`` is unset (evidence off)."""
        return cls(settings, metrics, **kw) if settings.dir is not None else None

    def start(self) -> None:
        """Start the compressing and writing threads."""
        self.capture.start()
        self.writer.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop both threads (queued records are written first), within ``timeout_s``."""
        self.capture.stop(timeout_s / 2)
        self.writer.stop(timeout_s / 2)

    def idle(self) -> bool:
        """True when nothing waits to be compressed or written."""
        return self.capture.idle() and self.writer.idle()

    def watch(self, stream_id: str, enabled: bool = True) -> None:
        """Retain ``stream_id``'s frames from now on (not when ``enabled`` is False)."""
        if enabled:
            self._watched.add(stream_id)
            self.store.open(stream_id)
        else:
            self.forget(stream_id)

    def forget(self, stream_id: str) -> None:
        """Stop retaining ``stream_id``'s frames and free them."""
        self._watched.discard(stream_id)
        self.store.forget(stream_id)

    def on_sample(self, stream_id: str, segment: int, k: int, time_s: float, repeated: bool,
                  frame: SmallFrame) -> None:
        """A sample was submitted for scoring: retain its frame (non-blocking)."""
        if stream_id in self._watched:
            self.capture.offer(stream_id, segment, k, time_s, repeated, frame)

    def on_score(self, sc: StreamScore, alert_started: bool) -> str | None:
        """Ask for the record of ``sc``'s window when it is evidence; its id, or None."""
        if sc.stream_id not in self._watched:
            return None
        low = self.settings.low_threshold
        if not alert_started and (low is None or sc.p_ai is None or sc.p_ai < low):
            return None
        rid = f"{round(sc.scored_at * 1000):013d}-{sc.stream_id}-{sc.seq}"
        record: dict[str, Any] = {
            "id": rid,
            "stream": sc.stream_id,
            "reason": "alert_start" if alert_started else "low_threshold",
            "low_threshold": low,
            "classifier": self.classifier,
            "replica": self.replica,
            "fence": sc.fence,
            "feature_names": list(FEATURE_NAMES),
            "samples": WINDOW_SAMPLES,
            "score": sc.to_json(features=True),
        }
        frames = tuple(self.store.window(sc.stream_id, sc.segment, sc.start_s, sc.end_s))
        self.writer.submit(EvidenceRequest(rid, sc.stream_id, sc.segment, sc.start_s, sc.end_s,
                                           record, frames))
        return rid

    def thumbnail(self, stream_id: str) -> KeptFrame | None:
        """The stream's newest retained frame (JPEG), or None."""
        return self.store.latest(stream_id)

    def record_dir(self, rid: str) -> Path | None:
        """The folder of a written record, or None (unknown, malformed or not yet written)."""
        if not _ID.match(rid):
            return None
        d = self.writer.dir / rid
        return d if (d / RECORD).is_file() else None
