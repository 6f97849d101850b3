"""Labelled clips -> a feature table on disk (Parquet), resumable, failures listed.

Inputs: the clips found by :func:`monitor.learn.discovery.discover` (a labelled folder or
a CSV manifest).

Output (:func:`extract_features`): a directory holding

* ``table.json``: feature spec version, backbone, window options, feature
  convention (``zero_step_angle_deg``), columns;
* ``part-NNNNN.parquet``: rows, one per window (the paper's centred window, and
  with ``all_windows`` every window along the 11.5 Hz grid), written atomically
  every ``chunk_clips`` clips, so an interrupted run loses at most one chunk;
* ``errors.jsonl``: one ``{"clip_id", "path", "code", "message"}`` per clip that
  could not be read. Failing clips never stop the run.

Re-running on the same directory skips every clip already in a part file (and
retries the failed ones); a different backbone, feature spec or convention is refused.
Columns: see :data:`META_COLUMNS` and :data:`~monitor.types.FEATURE_NAMES`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from .. import FEATURE_SPEC_VERSION
from ..core.embed import Embedder
from ..core.pipeline import ClipResult, score_file
from ..errors import ConfigError, RestravError
from ..media.decode import DecodeLimits
from ..types import FEATURE_NAMES, FloatArray, Score, check_zero_step_angle
from .discovery import ClipSpec

log = logging.getLogger("restrav.dataset")

TABLE_META = "table.json"
ERRORS_FILE = "errors.jsonl"
CENTRE = "centre"
GRID = "grid"

META_COLUMNS: tuple[str, ...] = (
    "clip_id",
    "path",
    "label",
    "generator",
    "group",
    "window",
    "window_index",
    "start_s",
    "repeated_samples",
    "zero_steps",
    "flagged",
    "fps",
    "duration_s",
    "width",
    "height",
    "codec",
    "format",
    "frames",
)
"""Per-row metadata next to the 21 features. ``label`` 1 = AI-generated, 0 = real;
``window`` is ``centre`` or ``grid``; ``window_index`` is -1 for the centre window;
``fps``, ``duration_s``, ``width``, ``height``, ``codec``, ``format``, ``frames``
describe the source clip (``frames`` -1 and ``fps`` NaN where unknown)."""

_SCHEMA = pa.schema(
    [
        ("clip_id", pa.string()),
        ("path", pa.string()),
        ("label", pa.int8()),
        ("generator", pa.string()),
        ("group", pa.string()),
        ("window", pa.string()),
        ("window_index", pa.int32()),
        ("start_s", pa.float64()),
        ("repeated_samples", pa.int32()),
        ("zero_steps", pa.int32()),
        ("flagged", pa.bool_()),
        ("fps", pa.float64()),
        ("duration_s", pa.float64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("codec", pa.string()),
        ("format", pa.string()),
        ("frames", pa.int64()),
        *((name, pa.float64()) for name in FEATURE_NAMES),
    ]
)


@dataclass
class FeatureTable:
    """A feature table in memory: one numpy array per column (strings as object arrays).

    ``meta`` is the content of ``table.json`` (backbone, feature spec, options).
    """

    columns: dict[str, npt.NDArray[Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.columns["clip_id"])

    @property
    def features(self) -> FloatArray:
        """``(N, 21)`` float64 features in SPEC order."""
        if len(self) == 0:
            return np.zeros((0, len(FEATURE_NAMES)))
        return np.stack([self.columns[n].astype(np.float64) for n in FEATURE_NAMES], axis=1)

    @property
    def labels(self) -> npt.NDArray[np.int64]:
        """1 = AI-generated, 0 = real."""
        return self.columns["label"].astype(np.int64)

    def col(self, name: str) -> npt.NDArray[Any]:
        """One column by name."""
        return self.columns[name]

    def select(self, mask: npt.NDArray[np.bool_] | Sequence[int]) -> FeatureTable:
        """The rows picked by a boolean mask or index list (same meta)."""
        m = np.asarray(mask)
        return FeatureTable({k: v[m] for k, v in self.columns.items()}, dict(self.meta))

    def windows(self, kind: str) -> FeatureTable:
        """Only the ``centre`` or only the ``grid`` windows."""
        return self.select(self.columns["window"] == kind)

    def clip_ids(self) -> list[str]:
        """Distinct clip ids in first-seen order."""
        return list(dict.fromkeys(self.columns["clip_id"].tolist()))


def _part_files(out_dir: Path) -> list[Path]:
    return sorted(out_dir.glob("part-*.parquet"))


def load_table(path: Path) -> FeatureTable:
    """Read a feature table directory (or a single ``.parquet`` file)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such feature table; run restrav extract first")
    files = [path] if path.is_file() else _part_files(path)
    meta: dict[str, Any] = {}
    if path.is_dir():
        if not (path / TABLE_META).is_file():
            raise ConfigError(f"{path}: not a feature table (no {TABLE_META}); run restrav extract")
        meta = json.loads((path / TABLE_META).read_text(encoding="utf-8"))
    try:
        tables = [pq.read_table(f, schema=_SCHEMA) for f in files]
    except (OSError, pa.ArrowInvalid) as exc:
        raise ConfigError(f"{path}: unreadable feature table: {exc}") from exc
    table = pa.concat_tables(tables) if tables else _SCHEMA.empty_table()
    cols = {
        name: table.column(name).to_numpy(zero_copy_only=False) for name in _SCHEMA.names
    }
    for name in ("clip_id", "path", "generator", "group", "window", "codec", "format"):
        cols[name] = cols[name].astype(object)
    return FeatureTable(cols, meta)


def write_table(table: FeatureTable, out_dir: Path) -> None:
    """Write a whole table as one part (used for derived or synthetic tables)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"feature_spec": FEATURE_SPEC_VERSION, **table.meta}
    (out_dir / TABLE_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    rows = [{k: _py(v[i]) for k, v in table.columns.items()} for i in range(len(table))]
    _write_part(out_dir, rows, 0)


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _write_part(out_dir: Path, rows: list[dict[str, Any]], index: int) -> Path:
    final = out_dir / f"part-{index:05d}.parquet"
    tmp = final.with_suffix(".parquet.tmp")
    pq.write_table(pa.Table.from_pylist(rows, schema=_SCHEMA), tmp)
    os.replace(tmp, final)
    return final


def clip_rows(spec: ClipSpec, result: ClipResult) -> list[dict[str, Any]]:
    """Table rows for one scored clip: its centre window, then its grid windows."""
    info = result.info
    base = {
        "clip_id": spec.clip_id,
        "path": str(spec.path),
        "label": spec.label,
        "generator": spec.generator,
        "group": spec.group,
        "fps": float(info.fps) if info.fps else math.nan,
        "duration_s": float(info.duration_s),
        "width": info.width,
        "height": info.height,
        "codec": info.codec,
        "format": info.format,
        "frames": info.frames if info.frames is not None else -1,
    }

    def row(score: Score, window: str, index: int) -> dict[str, Any]:
        r = dict(base)
        r.update(
            window=window,
            window_index=index,
            start_s=float(score.window.start_s),
            repeated_samples=int(score.repeated_samples or 0),
            zero_steps=int(score.window.repeated_frames),
            flagged=bool(score.flagged),
        )
        r.update({n: float(v) for n, v in zip(FEATURE_NAMES, score.window.features)})
        return r

    rows = [row(result.centre, CENTRE, -1)]
    for i, s in enumerate(result.windows or []):
        rows.append(row(s, GRID, i))
    return rows


@dataclass
class ExtractSummary:
    """What one extraction run did."""

    clips: int = 0
    skipped: int = 0
    extracted: int = 0
    failed: int = 0
    rows: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)


def table_zero_step_angle(meta: dict[str, Any]) -> float:
    """The feature convention of a table (the angle at zero-length steps); tables
    written before it was recorded used SPEC's 0 degrees."""
    return float(meta.get("zero_step_angle_deg", 0.0))


def _check_meta(out_dir: Path, meta: dict[str, Any]) -> None:
    path = out_dir / TABLE_META
    if not path.is_file():
        return
    old = json.loads(path.read_text(encoding="utf-8"))
    old["zero_step_angle_deg"] = table_zero_step_angle(old)
    for key in ("feature_spec", "backbone", "backbone_options", "all_windows", "hop",
                "zero_step_angle_deg"):
        if old.get(key, {} if key == "backbone_options" else None) != meta.get(key):
            raise ConfigError(
                f"{out_dir}: existing table has {key}={old.get(key)!r}, this run "
                f"{meta.get(key)!r}; use another output folder or the same options"
            )


def extract_features(
    clips: Sequence[ClipSpec],
    embedder: Embedder,
    out_dir: Path,
    limits: DecodeLimits = DecodeLimits(),
    all_windows: bool = False,
    hop: int = 1,
    chunk_clips: int = 16,
    backbone: str = "",
    progress: bool = False,
    score: Callable[[ClipSpec], ClipResult] | None = None,
    backbone_options: dict[str, Any] | None = None,
    zero_step_angle_deg: float = 0.0,
) -> ExtractSummary:
    """Compute the features of every clip into ``out_dir`` (see the module docstring).

    Clips already present in ``out_dir`` are skipped, so an interrupted run picks
    up where it stopped. ``backbone_options`` (image size, normalisation, dtype:
    anything that changes the features) are recorded with ``backbone`` and must
    match on resume, as must ``zero_step_angle_deg``, the feature convention (0 per
    SPEC, 90 as the upstream code: use the one of the classifier to train or
    evaluate). ``score`` replaces the default ``score_file(spec.path, embedder,
    None, limits, all_windows, hop, zero_step_angle_deg=...)`` (tests).
    Raises :class:`ConfigError` when ``out_dir`` holds a table made with other options.
    """
    if chunk_clips < 1:
        raise ValueError("chunk_clips must be >= 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "feature_spec": FEATURE_SPEC_VERSION,
        "backbone": backbone,
        "backbone_options": dict(backbone_options or {}),
        "all_windows": all_windows,
        "hop": hop,
        "zero_step_angle_deg": check_zero_step_angle(zero_step_angle_deg),
        "columns": [*META_COLUMNS, *FEATURE_NAMES],
    }
    _check_meta(out_dir, meta)
    (out_dir / TABLE_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    parts = _part_files(out_dir)
    done: set[str] = set()
    for f in parts:
        done.update(pq.read_table(f, columns=["clip_id"]).column(0).to_pylist())
    next_part = 1 + max((int(f.stem.split("-")[1]) for f in parts), default=-1)
    summary = ExtractSummary(clips=len(clips))
    todo = [c for c in clips if c.clip_id not in done]
    summary.skipped = len(clips) - len(todo)
    # failures of an earlier run stay listed until their clip is retried
    errors = {e["clip_id"]: e for e in read_errors(out_dir) if e.get("clip_id") not in done}
    pending: list[dict[str, Any]] = []

    def run(spec: ClipSpec) -> ClipResult:
        if score is not None:
            return score(spec)
        return score_file(
            spec.path, embedder, None, limits, all_windows=all_windows, hop=hop,
            zero_step_angle_deg=zero_step_angle_deg,
        )

    def flush() -> None:
        nonlocal next_part
        if pending:
            _write_part(out_dir, pending, next_part)
            next_part += 1
            pending.clear()
        _write_errors(out_dir, errors.values())

    bar = tqdm(todo, unit="clip", disable=not progress, file=sys.stderr, desc="extract")
    in_chunk = 0
    try:
        for spec in bar:
            bar.set_postfix_str(spec.clip_id[-40:])
            try:
                rows = clip_rows(spec, run(spec))
            except RestravError as exc:
                errors[spec.clip_id] = _error(spec, exc.code, exc.message)
            # batch job runner boundary: one clip's bug must not lose the others' work
            except Exception as exc:
                log.exception("internal error extracting %s", spec.path)
                errors[spec.clip_id] = _error(
                    spec, "internal", f"{type(exc).__name__}: {exc} (a bug; please report)"
                )
            else:
                errors.pop(spec.clip_id, None)
                pending.extend(rows)
                summary.extracted += 1
                summary.rows += len(rows)
            in_chunk += 1
            if in_chunk >= chunk_clips:
                flush()
                in_chunk = 0
    finally:
        flush()  # an interrupted run keeps every finished clip
        bar.close()
    summary.failed = len(errors)
    summary.errors = list(errors.values())
    return summary


def _error(spec: ClipSpec, code: str, message: str) -> dict[str, str]:
    return {"clip_id": spec.clip_id, "path": str(spec.path), "code": code, "message": message}


def _write_errors(out_dir: Path, errors: Iterable[dict[str, str]]) -> None:
    tmp = out_dir / (ERRORS_FILE + ".tmp")
    tmp.write_text("".join(json.dumps(e) + "\n" for e in errors), encoding="utf-8")
    os.replace(tmp, out_dir / ERRORS_FILE)


def read_errors(out_dir: Path) -> list[dict[str, str]]:
    """The failures recorded by the last extraction run into ``out_dir``."""
    path = Path(out_dir) / ERRORS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


__all__ = [
    "ExtractSummary",
    "FeatureTable",
    "clip_rows",
    "extract_features",
    "load_table",
    "read_errors",
    "write_table",
]
