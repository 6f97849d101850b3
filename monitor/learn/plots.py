"""The plots of ``restrav eval``'s report: ROC and PR curves, the feature
distributions per class, and the per-clip timelines (matplotlib, Agg backend,
PNG files, nothing shown on screen). Each ``plot_*`` reads the report dict of
:func:`monitor.learn.report.evaluate_artifact` and writes one PNG into ``out_dir``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..types import FEATURE_NAMES
from .dataset import FeatureTable
from .evaluation import pr_points, roc_points


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (files only, nothing on screen)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _legend(ax: Any, **kwargs: Any) -> None:
    """A legend only where something is labelled (matplotlib warns otherwise)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)


def plot_roc_pr(report: dict[str, Any], out_dir: Path) -> None:
    plt = pyplot()
    c = report["_curves"]
    y, p, curv = c["y"], c["p"], c["curvature"]
    both = len(set(np.asarray(y).tolist())) == 2
    fig, ax = plt.subplots(figsize=(5, 5))
    if both:
        fpr, tpr, _ = roc_points(y, p)
        ax.plot(fpr, tpr, label=f"model ({report['model']['metrics']['auroc']:.3f})")
        fpr, tpr, _ = roc_points(y, curv)
        auc = report["training_free_mean_curvature"]["auroc"]
        ax.plot(fpr, tpr, "--", label=f"mean curvature, training-free ({auc:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey", label="chance")
    ax.set(xlabel="false-positive rate (real called AI)", ylabel="true-positive rate",
           title="ROC (held-out clips)")
    _legend(ax, loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "roc.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 5))
    if both:
        rec, prec = pr_points(y, p)
        ax.step(rec, prec, where="post",
                label=f"model (AP {report['model']['metrics']['average_precision']:.3f})")
        rec, prec = pr_points(y, curv)
        ax.step(rec, prec, "--", where="post", label="mean curvature")
        ax.axhline(float(np.mean(y)), ls=":", color="grey", label="chance")
    ax.set(xlabel="recall (AI clips caught)", ylabel="precision", title="Precision-recall",
           ylim=(0, 1.02))
    _legend(ax, loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "pr.png", dpi=100)
    plt.close(fig)


def plot_features(report: dict[str, Any], out_dir: Path) -> None:
    plt = pyplot()
    test: FeatureTable = report["_curves"]["test"]
    x, y = test.features, test.labels
    names = ("theta_mean", "theta_var", "d_mean", "d_var")
    fig, axes = plt.subplots(2, 2, figsize=(9, 6.5))
    for ax, name in zip(axes.ravel(), names):
        j = FEATURE_NAMES.index(name)
        v = x[:, j]
        bins = np.histogram_bin_edges(v[np.isfinite(v)], bins=20) if len(v) else 10
        for lab, label, color in ((0, "real", "tab:blue"), (1, "AI-generated", "tab:red")):
            sel = v[y == lab]
            if len(sel):
                ax.hist(sel, bins=bins, alpha=0.55, color=color, label=f"{label} (n={len(sel)})")
        unit = {"theta_mean": " (degrees)", "theta_var": " (degrees²)"}.get(name, "")
        title = "mean curvature" if name == "theta_mean" else name
        ax.set(title=f"{title}{unit}", ylabel="windows")
        _legend(ax, fontsize=7)
    fig.suptitle("Feature distributions by class (held-out rows)")
    fig.tight_layout()
    fig.savefig(out_dir / "features.png", dpi=100)
    plt.close(fig)


def legend_label(text: str) -> str:
    """``text`` as a legend entry: matplotlib hides labels that start with ``_``, so such a
    label gets a leading space (clip ids like ``_cam1/a.mp4`` stay in the legend)."""
    return " " + text if text.startswith("_") else text


def draw_timeline(report: dict[str, Any], ax: Any) -> None:
    """The per-window P(AI) of the chosen clips on ``ax``, with the threshold and a legend."""
    for t in report["_timeline"]:
        style = "-o" if t["grid"] else "o"
        kind = "AI" if t["label"] else "real"
        label = legend_label(f"{t['clip_id'][-30:]} ({kind})")
        ax.plot(t["start_s"], t["score"], style, ms=3, label=label)
    ax.axhline(report["artifact"]["threshold"], ls="--", color="black", label="threshold")
    ax.set(xlabel="window start (s)", ylabel="P(AI)", ylim=(-0.02, 1.02),
           title="Per-window score along chosen clips")
    if not report["_timeline"]:
        ax.text(0.5, 0.5, "no clips chosen", ha="center", transform=ax.transAxes)
    _legend(ax, fontsize=7, loc="best")


def plot_timeline(report: dict[str, Any], out_dir: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    draw_timeline(report, ax)
    fig.tight_layout()
    fig.savefig(out_dir / "timeline.png", dpi=100)
    plt.close(fig)
