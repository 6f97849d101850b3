"""Finding labelled clips: a folder laid out by class and generator, or a CSV manifest.

:func:`discover` takes either:

* a folder laid out as ``real/**`` and ``ai/<generator>/**`` (any depth below;
  files are recognised by extension, :data:`VIDEO_EXTENSIONS`). The group of a
  clip (what a group split keeps on one side) is its first sub-folder below
  ``real/`` or ``ai/<generator>/`` (e.g. ``real/camera-3/a.mp4`` -> ``real/camera-3``),
  or the clip itself when it sits directly there;
* a CSV manifest with a header and the columns ``path,label`` and optionally
  ``generator,group``. ``label`` is ``real``/``0`` or ``ai``/``ai-generated``/
  ``fake``/``1``; relative paths are resolved against the CSV's folder; an empty
  group means the clip is its own group. At most :data:`MAX_MANIFEST_ROWS` rows.

Each clip is a :class:`ClipSpec` (label 1 = AI-generated). Nothing is decoded here.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".gif", ".ts", ".mpg", ".mpeg", ".flv",
     ".wmv", ".3gp", ".y4m"}
)
REAL = "real"
MAX_MANIFEST_ROWS = 10_000_000
_AI_LABELS = {"1", "ai", "ai-generated", "ai_generated", "fake", "generated", "synthetic"}
_REAL_LABELS = {"0", "real", "natural"}


@dataclass(frozen=True, slots=True)
class ClipSpec:
    """One labelled clip: where it is, its class (1 = AI), generator and group."""

    path: Path
    clip_id: str
    label: int
    generator: str
    group: str


def _is_video(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS


def discover_folder(root: Path) -> list[ClipSpec]:
    """Clips under ``root/real/`` (label 0) and ``root/ai/<generator>/`` (label 1)."""
    root = Path(root)
    real_dir, ai_dir = root / "real", root / "ai"
    if not real_dir.is_dir() and not ai_dir.is_dir():
        raise ConfigError(
            f"{root}: expected sub-folders real/ and ai/<generator>/ (or pass a CSV manifest "
            "with columns path,label,generator,group)"
        )
    out: list[ClipSpec] = []

    def add(base: Path, label: int, generator: str) -> None:
        for p in sorted(base.rglob("*")):
            if not _is_video(p):
                continue
            rel = p.relative_to(base)
            group_rel = base / rel.parts[0] if len(rel.parts) > 1 else p
            out.append(
                ClipSpec(
                    path=p,
                    clip_id=p.relative_to(root).as_posix(),
                    label=label,
                    generator=generator,
                    group=group_rel.relative_to(root).as_posix(),
                )
            )

    if real_dir.is_dir():
        add(real_dir, 0, REAL)
    if ai_dir.is_dir():
        for gen_dir in sorted(d for d in ai_dir.iterdir() if d.is_dir()):
            add(gen_dir, 1, gen_dir.name)
        stray = [p.name for p in ai_dir.iterdir() if _is_video(p)]
        if stray:
            raise ConfigError(
                f"{ai_dir}: videos directly under ai/ ({', '.join(stray[:3])}...) have no "
                "generator; move them to ai/<generator>/ (e.g. ai/unknown/)"
            )
    return out


def parse_label(value: str) -> int:
    """1 for an AI-generated label, 0 for a real one; ConfigError otherwise."""
    v = value.strip().lower()
    if v in _AI_LABELS:
        return 1
    if v in _REAL_LABELS:
        return 0
    raise ConfigError(f"unknown label {value!r}; use real/0 or ai/1")


def read_manifest(csv_path: Path) -> list[ClipSpec]:
    """Clips listed in a CSV manifest (header ``path,label[,generator][,group]``)."""
    csv_path = Path(csv_path)
    base = csv_path.parent
    out: list[ClipSpec] = []
    try:
        with csv_path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            cols = {c.strip().lower() for c in (reader.fieldnames or [])}
            if not {"path", "label"} <= cols:
                raise ConfigError(
                    f"{csv_path}: the header must name at least path and label "
                    f"(got {sorted(cols)}); optional: generator, group"
                )
            for n, raw in enumerate(reader, start=2):
                if n > MAX_MANIFEST_ROWS:
                    raise ConfigError(f"{csv_path}: more than {MAX_MANIFEST_ROWS} rows")
                row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k}
                if not row.get("path"):
                    raise ConfigError(f"{csv_path}:{n}: empty path")
                try:
                    label = parse_label(row["label"])
                except ConfigError as exc:
                    raise ConfigError(f"{csv_path}:{n}: {exc.message}") from exc
                p = Path(row["path"])
                path = p if p.is_absolute() else base / p
                gen = row.get("generator") or (REAL if label == 0 else "unknown")
                out.append(
                    ClipSpec(
                        path=path,
                        clip_id=row["path"],
                        label=label,
                        generator=REAL if label == 0 else gen,
                        group=row.get("group") or row["path"],
                    )
                )
    except OSError as exc:
        raise ConfigError(f"cannot read manifest {csv_path}: {exc}") from exc
    except csv.Error as exc:
        raise ConfigError(f"{csv_path}: malformed CSV: {exc}") from exc
    ids = [c.clip_id for c in out]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ConfigError(f"{csv_path}: clip {dup!r} listed twice")
    return out


def discover(source: Path) -> list[ClipSpec]:
    """Clips from a folder layout or a ``.csv`` manifest (see the module docstring)."""
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".csv":
        return read_manifest(source)
    if source.is_dir():
        return discover_folder(source)
    raise ConfigError(f"{source}: neither a folder (real/, ai/<generator>/) nor a .csv manifest")




__all__ = [
    "MAX_MANIFEST_ROWS",
    "VIDEO_EXTENSIONS",
    "ClipSpec",
    "discover",
    "discover_folder",
    "parse_label",
    "read_manifest",
]
