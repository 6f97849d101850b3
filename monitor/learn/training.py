"""Splits and training runs, on a feature table from :mod:`monitor.learn.dataset`.

Splits are made over clips, never rows, so the windows of one clip always stay
on one side:

* ``stratified``: a random share of clips per generator (real counts as one)
  goes to the test side;
* ``group``: whole groups (a source, a camera, a clip) go to one side, the test
  share drawn per class as far as the groups allow (``StratifiedGroupKFold``);
  no group is ever on both sides;
* ``logo`` (leave one generator out): one fold per AI generator; the test side
  holds that generator's clips and a fixed group-split share of the real clips,
  the train side every other generator and the rest of the real clips.

:func:`train` fits the scaler and model on the training rows only, sets the
threshold on them (a target false-positive rate on real rows by default, or
the paper's max-F1), evaluates the test rows, runs the shortcut baselines, and
:func:`monitor.learn.model_card.write_training_outputs` writes the artifact, ``split.json``
(which clips were held out, read back by :func:`read_split` for ``restrav eval``),
``training.json`` and ``model_card.md``. For ``logo`` the artifact is fitted on
every clip and the card reports the per-fold metrics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..core.classifier import Classifier
from ..errors import ConfigError
from .dataset import CENTRE, GRID, FeatureTable, table_zero_step_angle
from .evaluation import evaluate_scores, json_ready, per_generator, shortcut_baselines
from .fitting import ThresholdMode, fit_classifier

SplitMode = Literal["stratified", "group", "logo"]
WindowMode = Literal["centre", "all"]
SPLIT_FILE = "split.json"
TRAINING_FILE = "training.json"
CARD_FILE = "model_card.md"


@dataclass(frozen=True)
class Split:
    """One train/test partition of the clips of a table."""

    name: str
    train_clips: tuple[str, ...]
    test_clips: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """JSON view (``split.json``)."""
        return {"name": self.name, "train": list(self.train_clips), "test": list(self.test_clips)}


@dataclass(frozen=True)
class ClipIndex:
    """One row per clip: id, label, generator and group (from its centre row)."""

    clip_id: np.ndarray
    label: np.ndarray
    generator: np.ndarray
    group: np.ndarray

    @classmethod
    def of(cls, table: FeatureTable) -> ClipIndex:
        """Index the clips of ``table`` (first row of each clip)."""
        ids = table.col("clip_id").astype(str)
        _, first = np.unique(ids, return_index=True)
        first = np.sort(first)
        return cls(
            clip_id=ids[first],
            label=table.labels[first],
            generator=table.col("generator").astype(str)[first],
            group=table.col("group").astype(str)[first],
        )


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def stratified_split(table: FeatureTable, test_fraction: float = 0.25, seed: int = 0) -> Split:
    """Clips split at random, stratified by generator (real is one stratum)."""
    from sklearn.model_selection import train_test_split

    idx = ClipIndex.of(table)
    _need(len(idx.clip_id) >= 4, f"need at least 4 clips to split, got {len(idx.clip_id)}")
    strata = idx.generator
    _, counts = np.unique(strata, return_counts=True)
    if counts.min() < 2:
        strata = idx.label.astype(str)
    train, test = train_test_split(
        idx.clip_id, test_size=test_fraction, random_state=seed, stratify=strata
    )
    return Split("stratified", tuple(sorted(train)), tuple(sorted(test)))


def group_split(table: FeatureTable, test_fraction: float = 0.25, seed: int = 0) -> Split:
    """Whole groups to one side (no group on both), stratified by class as far as possible."""
    from sklearn.model_selection import StratifiedGroupKFold

    idx = ClipIndex.of(table)
    n_splits = max(2, round(1.0 / test_fraction))
    n_groups = len(set(idx.group.tolist()))
    _need(
        n_groups >= n_splits,
        f"group split with test fraction {test_fraction} needs >= {n_splits} groups, got "
        f"{n_groups}; add sources or use --split stratified",
    )
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    train_i, test_i = next(cv.split(idx.clip_id, idx.label, idx.group))
    return Split(
        "group", tuple(sorted(idx.clip_id[train_i])), tuple(sorted(idx.clip_id[test_i]))
    )


def logo_splits(
    table: FeatureTable, real_test_fraction: float = 0.25, seed: int = 0
) -> list[Split]:
    """Leave-one-generator-out folds (see the module docstring)."""
    idx = ClipIndex.of(table)
    gens = sorted(set(idx.generator[idx.label == 1].tolist()))
    _need(len(gens) >= 2, f"leave-one-generator-out needs >= 2 generators, got {gens}")
    real = idx.label == 0
    real_groups = np.array(sorted(set(idx.group[real].tolist())))
    _need(len(real_groups) >= 2, "leave-one-generator-out needs real clips from >= 2 groups")
    rng = np.random.default_rng(seed)
    n_test = min(len(real_groups) - 1, max(1, round(real_test_fraction * len(real_groups))))
    test_real_groups = set(rng.permutation(real_groups)[:n_test].tolist())
    real_test = real & np.isin(idx.group, list(test_real_groups))
    real_train = real & ~real_test
    folds = []
    for g in gens:
        test = real_test | ((idx.label == 1) & (idx.generator == g))
        train = real_train | ((idx.label == 1) & (idx.generator != g))
        folds.append(
            Split(f"logo:{g}", tuple(sorted(idx.clip_id[train])), tuple(sorted(idx.clip_id[test])))
        )
    return folds


def make_splits(
    table: FeatureTable, mode: SplitMode, test_fraction: float = 0.25, seed: int = 0
) -> list[Split]:
    """The split(s) of ``mode``: one for stratified/group, one per generator for logo."""
    if mode == "stratified":
        return [stratified_split(table, test_fraction, seed)]
    if mode == "group":
        return [group_split(table, test_fraction, seed)]
    if mode == "logo":
        return logo_splits(table, test_fraction, seed)
    raise ConfigError(f"unknown split {mode!r}; use stratified, group or logo")


def select_rows(table: FeatureTable, clips: tuple[str, ...], windows: WindowMode) -> FeatureTable:
    """The rows of ``clips``: centre windows only, or every grid window
    (falling back to the centre row for clips extracted without grid windows)."""
    in_clips = np.isin(table.col("clip_id").astype(str), np.asarray(clips, dtype=str))
    sub = table.select(in_clips)
    if windows == "centre":
        return sub.windows(CENTRE)
    grid = sub.col("window") == GRID
    with_grid = set(sub.col("clip_id")[grid].tolist())
    keep = grid | ((sub.col("window") == CENTRE) & ~np.isin(sub.col("clip_id"), list(with_grid)))
    return sub.select(keep)


@dataclass
class FoldResult:
    """Test metrics of one split."""

    split: Split
    evaluation: dict[str, Any]
    per_generator: list[dict[str, Any]]
    shortcuts: dict[str, dict[str, Any]]


@dataclass
class TrainResult:
    """The classifier to ship, how it was trained and how it did on held-out clips."""

    classifier: Classifier
    mode: SplitMode
    windows: WindowMode
    folds: list[FoldResult]
    data: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)


def data_summary(table: FeatureTable) -> dict[str, Any]:
    """Clips and rows per class and generator, and the spread of fps/duration."""
    idx = ClipIndex.of(table)
    gens, counts = np.unique(idx.generator, return_counts=True)
    centre = table.windows(CENTRE)
    fps = centre.col("fps").astype(np.float64)
    dur = centre.col("duration_s").astype(np.float64)

    def spread(v: np.ndarray) -> dict[str, float]:
        v = v[np.isfinite(v)]
        if not v.size:
            return {}
        return {"min": float(v.min()), "median": float(np.median(v)), "max": float(v.max())}

    by_class = {}
    for lab, name in ((0, "real"), (1, "ai")):
        sel = centre.labels == lab
        by_class[name] = {
            "clips": int(np.sum(idx.label == lab)),
            "fps": spread(fps[sel]),
            "duration_s": spread(dur[sel]),
            "flagged_windows": int(np.sum(centre.col("flagged")[sel])),
        }
    return {
        "clips": len(idx.clip_id),
        "rows": len(table),
        "groups": len(set(idx.group.tolist())),
        "clips_per_generator": {str(g): int(c) for g, c in zip(gens, counts)},
        "by_class": by_class,
    }


def _fit(
    rows: FeatureTable,
    kind: str,
    threshold_mode: ThresholdMode,
    target_fpr: float,
    seed: int,
    backbone: str,
    hyper: dict[str, Any],
) -> Classifier:
    return fit_classifier(
        rows.features,
        rows.labels,
        kind=kind,
        threshold_mode=threshold_mode,
        target_fpr=target_fpr,
        seed=seed,
        backbone=backbone,
        zero_step_angle_deg=table_zero_step_angle(rows.meta),
        **hyper,
    )


def train(
    table: FeatureTable,
    kind: str = "mlp",
    mode: SplitMode = "stratified",
    windows: WindowMode = "centre",
    threshold_mode: ThresholdMode = "fpr",
    target_fpr: float = 0.01,
    test_fraction: float = 0.25,
    seed: int = 0,
    n_boot: int = 1000,
    **hyper: Any,
) -> TrainResult:
    """Split, fit on the training rows only, evaluate on the held-out clips.

    Returns the classifier to ship: fitted on the train side for stratified and
    group splits, on every clip for ``logo`` (whose folds estimate how it does on
    an unseen generator).
    """
    _need(len(table) > 0, "the feature table is empty; run restrav extract first")
    backbone = str(table.meta.get("backbone", ""))
    splits = make_splits(table, mode, test_fraction, seed)
    folds: list[FoldResult] = []
    ship: Classifier | None = None
    for split in splits:
        tr = select_rows(table, split.train_clips, windows)
        te = select_rows(table, split.test_clips, windows)
        clf = _fit(tr, kind, threshold_mode, target_fpr, seed, backbone, hyper)
        p = clf.predict_proba(te.features)
        folds.append(
            FoldResult(
                split=split,
                evaluation=evaluate_scores(
                    te.labels, p, clf.threshold, te.col("clip_id"), n_boot, seed
                ),
                per_generator=per_generator(te.labels, p, te.col("generator"), clf.threshold),
                shortcuts=shortcut_baselines(tr, te, seed),
            )
        )
        if mode != "logo":
            ship = clf
    if ship is None:
        all_clips = tuple(sorted(set(table.col("clip_id").astype(str).tolist())))
        ship = _fit(
            select_rows(table, all_clips, windows),
            kind,
            threshold_mode,
            target_fpr,
            seed,
            backbone,
            hyper,
        )
    options = {
        "kind": kind,
        "split": mode,
        "windows": windows,
        "threshold_mode": threshold_mode,
        "target_fpr": target_fpr,
        "test_fraction": test_fraction,
        "seed": seed,
        "bootstrap": n_boot,
        **{k: v for k, v in hyper.items() if isinstance(v, int | float | str)},
    }
    ship.summary.update(
        json_ready(
            {
                "split": mode,
                "windows": windows,
                "backbone_options": table.meta.get("backbone_options", {}),
                "data": data_summary(table),
                "test": {f.split.name: f.evaluation["metrics"] for f in folds},
            }
        )
    )
    return TrainResult(ship, mode, windows, folds, data_summary(table), options)


def read_split(artifact_dir: Path) -> dict[str, Any] | None:
    """The ``split.json`` written next to an artifact, or None."""
    path = Path(artifact_dir) / SPLIT_FILE
    if not path.is_file():
        return None
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


__all__ = [
    "ClipIndex",
    "Split",
    "TrainResult",
    "data_summary",
    "group_split",
    "logo_splits",
    "make_splits",
    "read_split",
    "select_rows",
    "stratified_split",
    "train",
]
