"""What the stream manager calls to keep evidence and thumbnails: one object per `serve`.

Contract:

* A recorder exists when evidence is on (``serve.evidence.dir``) or thumbnails are
  (``serve.ui.thumbnails``, the default); :attr:`EvidenceRecorder.evidence_on` tells
  which. Without evidence no frame is retained beyond each stream's one thumbnail, no
  record is written and :meth:`record_dir` is always None.
* :meth:`EvidenceRecorder.watch` / :meth:`forget` start and stop keeping a stream's
  frames (a spec with ``evidence: false`` keeps no evidence: nothing of it is retained
  but its thumbnail). Each stream keeps ``frames_per_stream`` frames, and at least 24 +
  the engine's ``max_backlog_per_stream`` + 8: a frame is kept when it is submitted, and
  its window is scored up to that backlog later.
* :meth:`on_sample` (event loop, per submitted sample) hands the frame to the
  compressing threads when it is wanted (:mod:`~monitor.live.evidence.capture`);
  :meth:`on_score` (event loop, per scored window) asks the writer for a record when
  the window started an alert, or when its P(AI) is at or above ``low_threshold``, and
  returns the record's id at once (the record appears when written; a dropped one never
  does, and is counted). Neither blocks.
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

from ...config import EvidenceSettings, UiSettings
from ...metrics import EvidenceMetrics
from ...types import FEATURE_NAMES, WINDOW_SAMPLES, StreamScore
from .capture import FrameCapture, SmallFrame, default_capture_threads
from .frames import FrameStore, KeptFrame
from .thumbs import ThumbnailStore
from .writer import RECORD, EvidenceRequest, EvidenceWriter

EVIDENCE_ID_PATTERN = r"^[0-9]{13}-[A-Za-z0-9][A-Za-z0-9_.-]{0,63}-[0-9]{1,20}$"
_ID = re.compile(EVIDENCE_ID_PATTERN)


class EvidenceRecorder:
    """Frame retention, thumbnails, the writer and their settings (see the module
    docstring)."""

    def __init__(self, settings: EvidenceSettings, metrics: EvidenceMetrics | None = None,
                 replica: str | None = None, classifier: str | None = None,
                 clock: Callable[[], float] = time.time, engine_backlog: int = 24,
                 ui: UiSettings | None = None) -> None:
        self.settings = settings
        self.replica = replica
        self.classifier = classifier
        # frames are kept when submitted; a window is scored up to engine_backlog samples
        # later: the ring must still hold its 24 frames then (8 more for the loop's delay)
        self.keep = max(settings.frames_per_stream, WINDOW_SAMPLES + engine_backlog + 8)
        self.store: FrameStore | None = None
        self.writer: EvidenceWriter | None = None
        if settings.dir is not None:
            self.store = FrameStore(self.keep, settings.stream_bytes, settings.memory_bytes)
            self.writer = EvidenceWriter(settings, self.store, metrics, clock)
        self.thumbs: ThumbnailStore | None = None
        if ui is not None and ui.thumbnails:
            self.thumbs = ThumbnailStore(ui.thumbnail_stream_bytes, ui.thumbnail_memory_bytes,
                                         ui.thumbnail_interval_s)
        # one encode serves both: with evidence the thumbnail is the kept frame
        width = settings.frame_width if ui is None or self.store is not None \
            else ui.thumbnail_width
        self.capture = FrameCapture(self.store, width, settings.jpeg_quality,
                                    settings.capture_queue, metrics, clock, self.thumbs,
                                    settings.capture_threads or default_capture_threads())
        self._watched: set[str] = set()

    @classmethod
    def from_settings(cls, settings: EvidenceSettings, metrics: EvidenceMetrics | None = None,
                      ui: UiSettings | None = None, **kw: Any) -> EvidenceRecorder | None:
        """A recorder, or None when neither evidence (``settings.dir``) nor thumbnails
        (``ui.thumbnails``) are on."""
        if settings.dir is None and (ui is None or not ui.thumbnails):
            return None
        return cls(settings, metrics, ui=ui, **kw)

    @property
    def evidence_on(self) -> bool:
        """True when evidence records are kept (``serve.evidence.dir`` is set)."""
        return self.writer is not None

    def start(self) -> None:
        """Start the compressing and writing threads."""
        self.capture.start()
        if self.writer is not None:
            self.writer.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the threads (queued records are written first), within ``timeout_s``."""
        self.capture.stop(timeout_s / 2)
        if self.writer is not None:
            self.writer.stop(timeout_s / 2)

    def idle(self) -> bool:
        """True when nothing waits to be compressed or written."""
        return self.capture.idle() and (self.writer is None or self.writer.idle())

    def watch(self, stream_id: str, enabled: bool = True) -> None:
        """Keep ``stream_id``'s thumbnail from now on, and its frames for evidence unless
        ``enabled`` is False."""
        if self.thumbs is not None:
            self.thumbs.open(stream_id)
        if enabled and self.store is not None:
            self._watched.add(stream_id)
            self.store.open(stream_id)
        elif self.store is not None:
            self._watched.discard(stream_id)
            self.store.forget(stream_id)

    def forget(self, stream_id: str) -> None:
        """Stop keeping ``stream_id``'s frames and thumbnail, and free them."""
        self._watched.discard(stream_id)
        if self.store is not None:
            self.store.forget(stream_id)
        if self.thumbs is not None:
            self.thumbs.forget(stream_id)

    def on_sample(self, stream_id: str, segment: int, k: int, time_s: float, repeated: bool,
                  frame: SmallFrame) -> None:
        """A sample was submitted for scoring: retain its frame when it is wanted
        (non-blocking)."""
        self.capture.offer(stream_id, segment, k, time_s, repeated, frame,
                           keep=stream_id in self._watched)

    def on_score(self, sc: StreamScore, alert_started: bool) -> str | None:
        """Ask for the record of ``sc``'s window when it is evidence; its id, or None."""
        if sc.stream_id not in self._watched or self.store is None or self.writer is None:
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
        """The stream's latest thumbnail (JPEG), or None (none yet, or thumbnails off)."""
        return self.thumbs.get(stream_id) if self.thumbs is not None else None

    def record_dir(self, rid: str) -> Path | None:
        """The folder of a written record, or None (unknown, malformed or not yet written)."""
        if not _ID.match(rid) or self.writer is None:
            return None
        d = self.writer.dir / rid
        return d if (d / RECORD).is_file() else None
