"""`restrav eval`: evaluate an artifact on a feature table and write the report.

:func:`evaluate_artifact` computes, on the held-out clips named by the
artifact's ``split.json`` (or on every row, labelled in-sample, when there is
none): the model's metrics with bootstrap intervals, the per-generator table,
the shortcut baselines (metadata only, trained on the same train clips), the
training-free mean-curvature score, and the real-vs-real floor.

:func:`write_report` writes ``report.json``, ``report.md`` and the PNG plots
``roc.png``, ``pr.png``, ``features.png`` and ``timeline.png`` (matplotlib, Agg
backend, nothing shown on screen).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..core.backbone import same_backbone
from ..core.classifier import THETA_MEAN, Classifier
from ..errors import ConfigError
from .dataset import CENTRE, GRID, FeatureTable, table_zero_step_angle
from .evaluation import (
    evaluate_scores,
    json_ready,
    per_generator,
    real_vs_real_floor,
    shortcut_baselines,
)
from .plots import plot_features, plot_roc_pr, plot_timeline
from .training import WindowMode, select_rows, stratified_split

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PLOTS = ("roc.png", "pr.png", "features.png", "timeline.png")
SHORTCUT_WARN_AUROC_GAP = 0.05
"""A shortcut baseline within this AUROC of the model gets a warning..."""
SHORTCUT_WARN_MIN_AUROC = 0.6
"""...provided it is itself above this (a chance-level baseline is no shortcut)."""


def evaluate_artifact(
    table: FeatureTable,
    classifier: Classifier,
    split: dict[str, Any] | None = None,
    windows: WindowMode | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    floor_repeats: int = 3,
    timeline_clips: list[str] | None = None,
) -> dict[str, Any]:
    """Everything the report shows, as a JSON-ready dict (plus private ``_curves``).

    Raises :class:`ConfigError` when the table's features are in another convention
    than the classifier's (the angle at zero-length steps): its scores would be wrong.
    """
    table_angle = table_zero_step_angle(table.meta)
    if table_angle != classifier.zero_step_angle_deg:
        raise ConfigError(
            f"the table's features use {table_angle:g} degrees at zero-length steps, the "
            f"classifier expects {classifier.zero_step_angle_deg:g}: re-extract with "
            f"`restrav extract --zero-step-angle {classifier.zero_step_angle_deg:g}`"
        )
    win: WindowMode = windows or (split or {}).get("windows", "centre")
    all_clips = tuple(sorted(set(table.col("clip_id").astype(str).tolist())))
    note = ""
    trained_on: set[str] = set()
    for part in [split or {}, *(split or {}).get("folds", [])]:
        trained_on.update(part.get("train", []))
    if split is not None and "test" in split and set(split["test"]) & set(all_clips):
        test_clips = tuple(split["test"])
        train_clips = tuple(split["train"])
        split_name = str(split.get("name", "split"))
    elif trained_on and not trained_on & set(all_clips):
        test_clips, train_clips = all_clips, all_clips
        split_name = "external"
        note = (
            "none of this table's clips were used to train the artifact: every row is "
            "evaluated (an external test set; the shortcut baselines use a split of it)"
        )
    else:
        test_clips, train_clips = all_clips, all_clips
        split_name = "all rows"
        note = (
            "the artifact has no held-out clips (no split.json, or a leave-one-generator-out "
            "artifact fitted on every clip: see its training.json for the per-fold metrics): "
            "the metrics below are on every row of the table, which may include the "
            "training rows (in-sample)"
        )
    test = select_rows(table, test_clips, win)
    train_rows = select_rows(table, train_clips, win)
    if split_name in ("all rows", "external"):
        # shortcut baselines still need a train/test partition of their own
        s = stratified_split(table, 0.3, seed)
        train_rows = select_rows(table, s.train_clips, win)
        base_test = select_rows(table, s.test_clips, win)
    else:
        base_test = test
    y = test.labels
    p = classifier.predict_proba(test.features)
    curv = test.features[:, THETA_MEAN]
    shortcuts = shortcut_baselines(train_rows, base_test, seed)
    report: dict[str, Any] = {
        "artifact": {
            "kind": classifier.kind,
            "threshold": classifier.threshold,
            "threshold_mode": classifier.threshold_mode,
            "backbone": classifier.backbone,
        },
        "table_backbone": table.meta.get("backbone", ""),
        "split": split_name,
        "windows": win,
        "note": note,
        "test_clips": len(set(test.col("clip_id").tolist())),
        "test_rows": len(test),
        "model": evaluate_scores(y, p, classifier.threshold, test.col("clip_id"), n_boot, seed),
        "training_free_mean_curvature": evaluate_scores(
            y, curv, float(np.median(curv)) if len(curv) else 0.0, None, 0, seed
        )["metrics"],
        "per_generator": per_generator(y, p, test.col("generator"), classifier.threshold),
        "shortcuts": shortcuts,
        "real_vs_real_floor": real_vs_real_floor(
            table.windows(CENTRE), classifier.kind, seed, floor_repeats
        )
        if floor_repeats > 0
        else {},
    }
    warnings = []
    model_auc = report["model"]["metrics"]["auroc"]
    for name, m in shortcuts.items():
        if (
            math.isfinite(m["auroc"])
            and m["auroc"] >= SHORTCUT_WARN_MIN_AUROC
            and m["auroc"] >= model_auc - SHORTCUT_WARN_AUROC_GAP
        ):
            warnings.append(
                f"shortcut baseline {name} reaches AUROC {m['auroc']:.3f} (model "
                f"{model_auc:.3f}): metadata alone separates these classes"
            )
    floor = report["real_vs_real_floor"].get("auroc", math.nan)
    chance_sd = report["real_vs_real_floor"].get("chance_sd", math.nan)
    if (
        isinstance(floor, float)
        and math.isfinite(floor)
        and abs(floor - 0.5) > max(0.1, 3 * chance_sd)
    ):
        warnings.append(
            f"real-vs-real floor AUROC {floor:.3f} is far from 0.5 (chance spread "
            f"{chance_sd:.3f}): the evaluation may leak"
        )
    if report["table_backbone"] and classifier.backbone and not same_backbone(
        report["table_backbone"], classifier.backbone
    ):
        warnings.append("the table's backbone differs from the artifact's: scores are invalid")
    known = set(table.col("clip_id").astype(str).tolist())
    for cid in timeline_clips or []:
        if cid not in known:
            warnings.append(f"timeline clip {cid!r} is not in the table (use its clip_id)")
    report["warnings"] = warnings
    report["_curves"] = {"y": y, "p": p, "curvature": curv, "test": test}
    report["_timeline"] = _timeline_data(table, classifier, test, timeline_clips)
    return report


def _timeline_data(
    table: FeatureTable, clf: Classifier, test: FeatureTable, clips: list[str] | None
) -> list[dict[str, Any]]:
    grid = table.windows(GRID)
    have_grid = list(dict.fromkeys(grid.col("clip_id").astype(str).tolist()))
    if clips is None:
        test_ids = list(dict.fromkeys(test.col("clip_id").astype(str).tolist()))
        labels = dict(zip(test.col("clip_id").astype(str).tolist(), test.labels.tolist()))
        pool = [c for c in have_grid if c in labels] or test_ids
        clips = []
        for lab in (0, 1):  # two clips of each class when available
            clips += [c for c in pool if labels[c] == lab][:2]
    out = []
    for cid in clips:
        rows = grid.select(grid.col("clip_id") == cid)
        centre = table.windows(CENTRE).select(table.windows(CENTRE).col("clip_id") == cid)
        src = rows if len(rows) else centre
        if not len(src):
            continue
        out.append(
            {
                "clip_id": cid,
                "label": int(src.labels[0]),
                "start_s": src.col("start_s").astype(float).tolist(),
                "score": clf.predict_proba(src.features).tolist(),
                "flagged": src.col("flagged").astype(bool).tolist(),
                "grid": bool(len(rows)),
            }
        )
    return out


def _f(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def render_markdown(report: dict[str, Any]) -> str:
    """The human-readable page (``report.md``) for a report dict."""
    m, ci = report["model"]["metrics"], report["model"]["ci95"]
    a = report["artifact"]
    lines = [
        f"# ReStraV evaluation: `{a['kind']}`",
        "",
        f"Split: **{report['split']}**, windows: {report['windows']}, "
        f"{report['test_clips']} clips / {report['test_rows']} rows evaluated. "
        f"Threshold {a['threshold']:.6g} ({a['threshold_mode']}).",
        "",
    ]
    if report["note"]:
        lines += [f"> Note: {report['note']}.", ""]
    for w in report["warnings"]:
        lines += [f"> **Warning:** {w}.", ""]
    lines += ["## Model", "", "| metric | value | 95 % CI |", "|---|---|---|"]
    for name in (
        "accuracy", "balanced_accuracy", "f1", "precision", "tpr", "fpr", "auroc",
        "average_precision", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", "ece",
    ):
        lo_hi = ci.get(name)
        cis = f"[{_f(lo_hi[0])}, {_f(lo_hi[1])}]" if lo_hi else ""
        lines.append(f"| {name} | {_f(m.get(name))} | {cis} |")
    lines += [
        "",
        "TPR at 1 % / 0.1 % FPR need at least 100 / 1000 real rows to mean anything; "
        "ECE is the expected calibration error of P(AI) (10 bins).",
        "",
        "## Per generator (each against all real rows)",
        "",
        "| generator | n | detection rate / FPR | mean score | AUROC | AP | TPR@1%FPR |",
        "|---|---|---|---|---|---|---|",
    ]
    for g in report["per_generator"]:
        rate = g.get("detection_rate", g.get("false_positive_rate"))
        lines.append(
            f"| {g['generator']} | {g['n']} | {_f(rate)} | {_f(g['mean_score'])} | "
            f"{_f(g.get('auroc'))} | {_f(g.get('average_precision'))} | "
            f"{_f(g.get('tpr_at_1pct_fpr'))} |"
        )
    tf = report["training_free_mean_curvature"]
    lines += [
        "",
        "## Is it a shortcut? Baselines beside the model",
        "",
        "| predictor | reads | AUROC | accuracy |",
        "|---|---|---|---|",
        f"| **model ({a['kind']})** | 21 trajectory features | {_f(m['auroc'])} | "
        f"{_f(m['accuracy'])} |",
        f"| mean curvature (training-free; accuracy at its median) | feature 17 only | "
        f"{_f(tf['auroc'])} | "
        f"{_f(tf['accuracy'])} |",
    ]
    for name, s in report["shortcuts"].items():
        lines.append(
            f"| {name} | {', '.join(s['columns'])} | {_f(s['auroc'])} | {_f(s['accuracy'])} |"
        )
    floor = report["real_vs_real_floor"]
    lines += [
        "",
        "The metadata baselines never see a video frame: if one comes close to the model, "
        "the classes differ in frame rate, duration or resolution and the model may have "
        "learned that instead of the geometry.",
        "",
        f"Real-vs-real floor (the same classifier trained to split two random halves of the "
        f"real clips by group): AUROC **{_f(floor.get('auroc'))}** over "
        f"{floor.get('repeats', 0)} repeats (chance alone spreads it by about "
        f"{_f(floor.get('chance_sd'))}). It should be near 0.5; far from it, clips of "
        "one source leak across the split.",
        "",
        "## Plots",
        "",
        "![ROC](roc.png) ![PR](pr.png)",
        "",
        "![Feature distributions](features.png)",
        "",
        "![Score timeline](timeline.png)",
        "",
    ]
    if report["_timeline"] and not any(t["grid"] for t in report["_timeline"]):
        lines.append(
            "The timeline shows only the centred window: extract with `--all-windows` to "
            "see every window along a clip."
        )
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write report.json, report.md and the four PNGs; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    public = {k: v for k, v in report.items() if not k.startswith("_")}
    public["timeline"] = report["_timeline"]
    (out_dir / REPORT_JSON).write_text(
        json.dumps(json_ready(public), indent=2) + "\n", encoding="utf-8"
    )
    (out_dir / REPORT_MD).write_text(render_markdown(report), encoding="utf-8")
    plot_roc_pr(report, out_dir)
    plot_features(report, out_dir)
    plot_timeline(report, out_dir)
    return [out_dir / REPORT_JSON, out_dir / REPORT_MD, *(out_dir / p for p in PLOTS)]


__all__ = ["evaluate_artifact", "render_markdown", "write_report"]
