"""A trained classifier's folder: the artifact, ``split.json``, ``training.json`` and
the Markdown model card (data, method, threshold, held-out metrics with intervals,
shortcut baselines, caveats), from a :class:`~monitor.learn.training.TrainResult`."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import FEATURE_SPEC_VERSION, __version__
from .evaluation import json_ready
from .training import CARD_FILE, SPLIT_FILE, TRAINING_FILE, TrainResult


def _options(opts: dict[str, Any]) -> str:
    return "(" + ", ".join(f"{k} {v}" for k, v in opts.items()) + ")" if opts else ""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def _ci(ev: dict[str, Any], name: str) -> str:
    m = ev["metrics"].get(name, math.nan)
    ci = ev.get("ci95", {}).get(name)
    if ci and all(isinstance(c, float) and not math.isnan(c) for c in ci):
        return f"{_fmt(m)} [{ci[0]:.3f}, {ci[1]:.3f}]"
    return _fmt(m)


def model_card(result: TrainResult) -> str:
    """The Markdown model card: data, method, threshold, held-out metrics, caveats."""
    clf = result.classifier
    d = result.data
    lines = [
        f"# Model card: ReStraV `{clf.kind}` classifier",
        "",
        f"- Created: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} by restrav-monitor "
        f"{__version__}",
        f"- Feature spec: `{FEATURE_SPEC_VERSION}` (21 trajectory features, SPEC section 5)",
        f"- Backbone used for the features: `{clf.backbone or 'unknown'}` "
        f"{_options(clf.summary.get('backbone_options', {}))}; score only with the same "
        "backbone and options",
        f"- Windows: `{result.windows}`; split: `{result.mode}`; seed {result.options['seed']}",
        f"- Decision threshold: **{clf.threshold:.6g}** ({clf.threshold_mode}); P(AI) >= "
        "threshold means AI-generated",
        "- Positive class: AI-generated; the score is P(AI-generated)",
        "",
        "## Data",
        "",
        f"{d['clips']} clips ({d['by_class']['real']['clips']} real, "
        f"{d['by_class']['ai']['clips']} AI), {d['groups']} groups, {d['rows']} rows.",
        "",
        "| generator | clips |",
        "|---|---|",
        *(f"| {g} | {n} |" for g, n in d["clips_per_generator"].items()),
        "",
        "| class | fps (min / median / max) | duration s (min / median / max) | flagged windows |",
        "|---|---|---|---|",
    ]
    for name in ("real", "ai"):
        c = d["by_class"][name]
        f, du = c["fps"], c["duration_s"]
        lines.append(
            f"| {name} | {' / '.join(_fmt(f.get(k, math.nan)) for k in ('min', 'median', 'max'))}"
            f" | {' / '.join(_fmt(du.get(k, math.nan)) for k in ('min', 'median', 'max'))}"
            f" | {c['flagged_windows']} |"
        )
    lines += [
        "",
        "If fps or duration differ between the classes, a classifier can learn them instead "
        "of the geometry: compare with the shortcut baselines below.",
        "",
        "## Held-out metrics (95 % bootstrap intervals over clips)",
        "",
        "| split | n | accuracy | balanced acc. | F1 | AUROC | AP | TPR@1%FPR | TPR@0.1%FPR "
        "| ECE |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in result.folds:
        ev = f.evaluation
        lines.append(
            f"| {f.split.name} | {int(ev['metrics']['n'])} | "
            + " | ".join(
                _ci(ev, k)
                for k in (
                    "accuracy",
                    "balanced_accuracy",
                    "f1",
                    "auroc",
                    "average_precision",
                    "tpr_at_1pct_fpr",
                    "tpr_at_0.1pct_fpr",
                    "ece",
                )
            )
            + " |"
        )
    lines += ["", "## Shortcut baselines (metadata only, same split)", ""]
    lines += ["| split | baseline | AUROC | accuracy |", "|---|---|---|---|"]
    for f in result.folds:
        for name, m in f.shortcuts.items():
            lines.append(
                f"| {f.split.name} | {name} | {_fmt(m['auroc'])} | {_fmt(m['accuracy'])} |"
            )
    lines += [
        "",
        "A baseline close to the model means the data set lets metadata alone tell the "
        "classes apart: fix the data (match frame rates, durations, codecs) before trusting "
        "the model.",
        "",
        "## Caveats",
        "",
        "- Metrics come from the clips above only; footage from other cameras, generators, "
        "codecs or frame rates may score differently (run `restrav robustness`).",
        "- Windows with repeated frames (sources below 11.5 fps) are flagged; their scores "
        "are less reliable.",
    ]
    if result.mode == "logo":
        lines.append(
            "- The artifact is fitted on every clip; the table above estimates each "
            "generator's detection when it was unseen."
        )
    return "\n".join(lines) + "\n"


def write_training_outputs(result: TrainResult, out_dir: Path) -> None:
    """Artifact + ``split.json`` + ``training.json`` + ``model_card.md`` into ``out_dir``."""
    out_dir = Path(out_dir)
    result.classifier.save(out_dir)
    split = (
        result.folds[0].split.to_json()
        if result.mode != "logo"
        else {"name": "logo", "folds": [f.split.to_json() for f in result.folds]}
    )
    split["windows"] = result.windows
    (out_dir / SPLIT_FILE).write_text(json.dumps(split, indent=1) + "\n", encoding="utf-8")
    report = {
        "options": result.options,
        "data": result.data,
        "threshold": result.classifier.threshold,
        "threshold_mode": result.classifier.threshold_mode,
        "folds": [
            {
                "split": f.split.name,
                "train_clips": len(f.split.train_clips),
                "test_clips": len(f.split.test_clips),
                **f.evaluation,
                "per_generator": f.per_generator,
                "shortcuts": f.shortcuts,
            }
            for f in result.folds
        ],
    }
    (out_dir / TRAINING_FILE).write_text(
        json.dumps(json_ready(report), indent=2) + "\n", encoding="utf-8"
    )
    (out_dir / CARD_FILE).write_text(model_card(result), encoding="utf-8")


__all__ = ["model_card", "write_training_outputs"]
