"""Writing evidence records to ``serve.evidence.dir``, off the scoring path, with retention.

Contract:

* :meth:`EvidenceWriter.submit` never blocks: a :class:`EvidenceRequest` goes to a
  bounded queue (``queue_records``); when full it is dropped and counted
  (``records_dropped{reason="queue_full"}``): a slow disk costs evidence, never scoring.
* A request holds the window's frames already retained when it was scored; one thread
  waits (at most ``frames_wait_s``) for any still missing in the
  :class:`~monitor.live.evidence.frames.FrameStore` (fewer: ``frames_missing``), then
  writes ``clip.mp4`` (H.264, each frame at its sample time), ``sheet.jpg`` (the
  contact sheet, each frame labelled with its time and ``R`` when it repeated the
  previous one) and ``record.json`` into ``.tmp-<id>/`` and renames that folder to
  ``<id>/``: a reader sees a whole record or none. Any ``OSError`` (read-only or full
  disk) drops the record (``write_error``), logged once per run of failures.
* Retention after every record and at start: records older than ``max_age_s``
  (``records_deleted{reason="age"}``), then the oldest until the total is at most
  ``max_disk_bytes`` (``size``). Ids start with the Unix time in milliseconds, so
  their order is their age. Leftover ``.tmp-*`` folders are removed at start.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...config import EvidenceSettings
from ...media.encode import write_clip
from ...media.stills import contact_sheet, decode_jpeg
from ...metrics import EvidenceMetrics
from ...types import WINDOW_SAMPLES
from .frames import FrameStore, KeptFrame
from .worker import QueueThread

log = logging.getLogger("restrav.evidence")

CLIP, SHEET, RECORD = "clip.mp4", "sheet.jpg", "record.json"
"""The files of one record."""


@dataclass(frozen=True, slots=True)
class EvidenceRequest:
    """One window to keep: its id, where its frames are, and the record's fields."""

    id: str
    stream_id: str
    segment: int
    start_s: float
    end_s: float
    record: dict[str, Any]
    frames: tuple[KeptFrame, ...] = ()
    """The window's frames already retained when it was scored (held by the request, so
    that a writer behind schedule still finds them after the ring moved on)."""


class EvidenceWriter(QueueThread[EvidenceRequest]):
    """The writer thread, its bounded queue and the retention (see the module docstring)."""

    name = "evidence-writer"

    def __init__(self, settings: EvidenceSettings, store: FrameStore,
                 metrics: EvidenceMetrics | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if settings.dir is None:
            raise ValueError("EvidenceWriter needs serve.evidence.dir")
        super().__init__(settings.queue_records)
        self.dir: Path = settings.dir
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.written = 0
        self.dropped: dict[str, int] = {}
        self.deleted: dict[str, int] = {}
        self._index: dict[str, int] = {}  # id -> bytes on disk
        self._failing = False

    def submit(self, request: EvidenceRequest) -> bool:
        """Queue a record; False (dropped, counted) when the queue is full."""
        if not self.put(request):
            self._drop("queue_full", request.id)
            return False
        return True

    @property
    def disk_bytes(self) -> int:
        """Bytes of the records this writer knows on disk."""
        return sum(self._index.values())

    # --- the thread -------------------------------------------------------------------

    def _drop(self, reason: str, rid: str, detail: str = "") -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        if self.metrics is not None:
            self.metrics.records_dropped.labels(reason).inc()
        if reason == "write_error":
            if not self._failing:  # once per run of failures, not once per alert
                log.warning("evidence %s not written (%s); more failures are only counted "
                            "(restrav_evidence_records_dropped_total)", rid, detail)
            self._failing = True
        else:
            log.info("evidence %s dropped: %s", rid, reason)

    def setup(self) -> None:
        """Scan the folder first: leftovers, the index, retention."""
        self._scan()

    def handle(self, req: EvidenceRequest) -> None:
        """Write one record (or drop it, counted), then apply retention."""
        frames = list(req.frames)
        if len(frames) < WINDOW_SAMPLES:  # the capture thread was behind: wait for the rest
            have = {f.k for f in frames}
            later = self.store.wait_window(req.stream_id, req.segment, req.start_s, req.end_s,
                                           WINDOW_SAMPLES, self.settings.frames_wait_s)
            frames = sorted(frames + [f for f in later if f.k not in have], key=lambda f: f.k)
        if len(frames) != WINDOW_SAMPLES:
            self._drop("frames_missing", req.id)
            return
        try:
            size = self._write(req, frames)
        except (OSError, ValueError) as exc:
            self._drop("write_error", req.id, f"{type(exc).__name__}: {exc}")
            shutil.rmtree(self.dir / f".tmp-{req.id}", ignore_errors=True)
            return
        self._failing = False
        self._index[req.id] = size
        self.written += 1
        if self.metrics is not None:
            self.metrics.records.inc()
        self._retain()

    def _write(self, req: EvidenceRequest, frames: list[KeptFrame]) -> int:
        tmp = self.dir / f".tmp-{req.id}"
        tmp.mkdir(parents=True)
        rgb = [decode_jpeg(f.jpeg) for f in frames]
        t0 = frames[0].time_s
        write_clip(tmp / CLIP, rgb, [f.time_s for f in frames])
        labels = [f"{f.time_s - t0:5.2f}s{' R' if f.repeated else ''}" for f in frames]
        (tmp / SHEET).write_bytes(contact_sheet(rgb, labels))
        record = dict(req.record)
        record["frames"] = [
            {"k": f.k, "time_s": round(f.time_s, 6), "wall_s": round(f.wall_s, 6),
             "repeated": f.repeated} for f in frames
        ]
        record["frame_size"] = [frames[0].width, frames[0].height]
        record["files"] = {"clip": CLIP, "sheet": SHEET}
        (tmp / RECORD).write_text(json.dumps(record, sort_keys=True))
        size = sum(p.stat().st_size for p in tmp.iterdir())
        os.rename(tmp, self.dir / req.id)
        return size

    def _scan(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            entries = list(self.dir.iterdir())
        except OSError as exc:
            log.warning("evidence folder %s unusable: %s", self.dir, exc)
            self._failing = True
            return
        for p in entries:
            if p.name.startswith(".tmp-"):
                shutil.rmtree(p, ignore_errors=True)
            elif p.is_dir() and not p.name.startswith("."):
                try:
                    self._index[p.name] = sum(f.stat().st_size for f in p.iterdir())
                except OSError:
                    continue
        self._retain()

    def _retain(self) -> None:
        oldest_ms = (self.clock() - self.settings.max_age_s) * 1000
        total = self.disk_bytes
        for rid in sorted(self._index):
            if _ms_of(rid) < oldest_ms:
                reason = "age"
            elif total > self.settings.max_disk_bytes:
                reason = "size"
            else:
                break
            shutil.rmtree(self.dir / rid, ignore_errors=True)
            total -= self._index.pop(rid)
            self.deleted[reason] = self.deleted.get(reason, 0) + 1
            if self.metrics is not None:
                self.metrics.records_deleted.labels(reason).inc()
        if self.metrics is not None:
            self.metrics.disk_bytes.set(total)


def _ms_of(rid: str) -> int:
    head = rid.split("-", 1)[0]
    return int(head) if head.isdigit() else 0
