"""Metrics a user can trust: point estimates, bootstrap intervals, per-generator
tables, and the baselines that reveal shortcuts.

Conventions: label 1 = AI-generated (the positive class), scores are P(AI), a
row is called AI when ``score >= threshold``. The metric functions are numpy
re-implementations that agree with scikit-learn's on the same predictions
(tests check it) and are fast enough to bootstrap:

* ``auroc``: Mann-Whitney U with mid-ranks for ties (= ``roc_auc_score``);
* ``average_precision``: sum over distinct thresholds of (R_n - R_{n-1}) P_n
  (= ``average_precision_score``);
* ``tpr_at_fpr``: the highest TPR among ROC points whose FPR <= the target;
* ``ece``: expected calibration error of P(AI) with ``bins`` equal-width bins
  (bin edges as ``sklearn.calibration.calibration_curve``), weighted by bin size.

Bootstrap intervals resample whole clips (all windows of a clip together), with
a seed, percentile method. Shortcut baselines fit a logistic regression on
metadata alone (source fps; duration; fps + duration + resolution) on the same
train/test clips as the model: if they score near the model, the model may be
reading the frame rate, not the geometry. The real-vs-real floor trains the same
classifier kind to separate two random halves of the real clips (split by
group): an AUROC far from 0.5 there means the evaluation itself leaks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ..types import FloatArray
from .dataset import FeatureTable
from .fitting import fit_classifier

Metrics = dict[str, float]
ArrayLike = npt.ArrayLike

METRIC_NAMES: tuple[str, ...] = (
    "accuracy",
    "balanced_accuracy",
    "f1",
    "precision",
    "tpr",
    "fpr",
    "auroc",
    "average_precision",
    "tpr_at_1pct_fpr",
    "tpr_at_0.1pct_fpr",
    "ece",
)


def _arrays(y: ArrayLike, s: ArrayLike) -> tuple[npt.NDArray[np.bool_], FloatArray]:
    yy = np.asarray(y).astype(bool).reshape(-1)
    ss = np.asarray(s, dtype=np.float64).reshape(-1)
    if yy.shape != ss.shape:
        raise ValueError(f"labels {yy.shape} and scores {ss.shape} differ in length")
    return yy, ss


def _midranks(s: FloatArray) -> FloatArray:
    order = np.argsort(s, kind="mergesort")
    ss = s[order]
    ranks = np.empty(len(s), dtype=np.float64)
    # ties share the mean of their ranks
    _, first, counts = np.unique(ss, return_index=True, return_counts=True)
    mean_rank = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(mean_rank, counts)
    return ranks


def auroc(y: ArrayLike, s: ArrayLike) -> float:
    """Area under the ROC curve; NaN when one class is absent."""
    yy, ss = _arrays(y, s)
    n_pos, n_neg = int(yy.sum()), int((~yy).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    r = _midranks(ss)
    return float((r[yy].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_points(y: ArrayLike, s: ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(fpr, tpr, thresholds) at every distinct score, from (0, 0) at +inf."""
    yy, ss = _arrays(y, s)
    order = np.argsort(-ss, kind="mergesort")
    ss, yy = ss[order], yy[order]
    last = np.r_[np.nonzero(np.diff(ss))[0], len(ss) - 1] if len(ss) else np.zeros(0, int)
    tps = np.cumsum(yy)[last].astype(np.float64)
    fps = (last + 1 - tps).astype(np.float64)
    n_pos, n_neg = max(int(yy.sum()), 1), max(int((~yy).sum()), 1)
    fpr = np.r_[0.0, fps / n_neg]
    tpr = np.r_[0.0, tps / n_pos]
    thr = np.r_[np.inf, ss[last]]
    return fpr, tpr, thr


def average_precision(y: ArrayLike, s: ArrayLike) -> float:
    """Average precision (step-wise area under the PR curve); NaN without positives."""
    yy, ss = _arrays(y, s)
    n_pos = int(yy.sum())
    if n_pos == 0:
        return math.nan
    order = np.argsort(-ss, kind="mergesort")
    ss, yy = ss[order], yy[order]
    last = np.r_[np.nonzero(np.diff(ss))[0], len(ss) - 1]
    tps = np.cumsum(yy)[last].astype(np.float64)
    precision = tps / (last + 1)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def pr_points(y: ArrayLike, s: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """(recall, precision) at every distinct score, highest threshold first."""
    yy, ss = _arrays(y, s)
    order = np.argsort(-ss, kind="mergesort")
    ss, yy = ss[order], yy[order]
    last = np.r_[np.nonzero(np.diff(ss))[0], len(ss) - 1] if len(ss) else np.zeros(0, int)
    tps = np.cumsum(yy)[last].astype(np.float64)
    return tps / max(int(yy.sum()), 1), tps / (last + 1)


def tpr_at_fpr(y: ArrayLike, s: ArrayLike, max_fpr: float) -> float:
    """Highest TPR over the ROC points whose FPR <= ``max_fpr``; NaN if a class is absent."""
    yy, _ = _arrays(y, s)
    if yy.all() or not yy.any():
        return math.nan
    fpr, tpr, _ = roc_points(y, s)
    return float(tpr[fpr <= max_fpr + 1e-15].max())


def ece(y: ArrayLike, p: ArrayLike, bins: int = 10) -> float:
    """Expected calibration error of P(AI) over ``bins`` equal-width bins."""
    yy, pp = _arrays(y, p)
    if len(pp) == 0:
        return math.nan
    edges = np.linspace(0.0, 1.0, bins + 1)
    ids = np.searchsorted(edges[1:-1], pp)
    total = np.bincount(ids, minlength=bins).astype(np.float64)
    sum_p = np.bincount(ids, weights=pp, minlength=bins)
    sum_y = np.bincount(ids, weights=yy.astype(np.float64), minlength=bins)
    nz = total > 0
    return float(np.sum(np.abs(sum_y[nz] - sum_p[nz])) / len(pp))


def binary_metrics(y: ArrayLike, p: ArrayLike, threshold: float) -> Metrics:
    """Every metric of :data:`METRIC_NAMES` plus counts, at ``threshold``."""
    yy, pp = _arrays(y, p)
    pred = pp >= threshold
    tp = float(np.sum(pred & yy))
    fp = float(np.sum(pred & ~yy))
    fn = float(np.sum(~pred & yy))
    tn = float(np.sum(~pred & ~yy))
    n_pos, n_neg = tp + fn, fp + tn
    tpr = tp / n_pos if n_pos else math.nan
    tnr = tn / n_neg if n_neg else math.nan
    return {
        "n": float(len(yy)),
        "n_ai": n_pos,
        "n_real": n_neg,
        "accuracy": (tp + tn) / len(yy) if len(yy) else math.nan,
        "balanced_accuracy": (tpr + tnr) / 2.0,
        "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "tpr": tpr,
        "fpr": fp / n_neg if n_neg else math.nan,
        "auroc": auroc(yy, pp),
        "average_precision": average_precision(yy, pp),
        "tpr_at_1pct_fpr": tpr_at_fpr(yy, pp, 0.01),
        "tpr_at_0.1pct_fpr": tpr_at_fpr(yy, pp, 0.001),
        "ece": ece(yy, pp),
    }


def bootstrap_ci(
    y: ArrayLike,
    p: ArrayLike,
    threshold: float,
    clusters: Sequence[Any] | npt.NDArray[Any] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals for every metric of :data:`METRIC_NAMES`.

    ``clusters`` (e.g. clip ids) makes each resample draw whole clusters, so the
    windows of one clip move together. Resamples missing a class give NaN for
    the metrics that need both and are ignored by those metrics' intervals.
    """
    yy, pp = _arrays(y, p)
    rng = np.random.default_rng(seed)
    if clusters is None:
        members = [np.array([i]) for i in range(len(yy))]
    else:
        c = np.asarray(clusters, dtype=object).astype(str)
        _, inv, counts = np.unique(c, return_inverse=True, return_counts=True)
        order = np.argsort(inv, kind="stable")
        members = np.split(order, np.cumsum(counts)[:-1]) if len(c) else []
    if not members:
        return {m: (math.nan, math.nan) for m in METRIC_NAMES}
    draws: dict[str, list[float]] = {m: [] for m in METRIC_NAMES}
    for _ in range(n_boot):
        pick = rng.integers(0, len(members), len(members))
        idx = np.concatenate([members[k] for k in pick])
        m = binary_metrics(yy[idx], pp[idx], threshold)
        for name in METRIC_NAMES:
            draws[name].append(m[name])
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    out: dict[str, tuple[float, float]] = {}
    for name, values in draws.items():
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        out[name] = (
            (float(np.percentile(v, lo_q)), float(np.percentile(v, hi_q)))
            if v.size
            else (math.nan, math.nan)
        )
    return out


def evaluate_scores(
    y: ArrayLike,
    p: ArrayLike,
    threshold: float,
    clusters: Sequence[Any] | npt.NDArray[Any] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """``{"metrics": {...}, "ci95": {name: [lo, hi]}}`` for one set of predictions."""
    ci = bootstrap_ci(y, p, threshold, clusters, n_boot, seed) if n_boot > 0 else {}
    return {
        "metrics": binary_metrics(y, p, threshold),
        "ci95": {k: [lo, hi] for k, (lo, hi) in ci.items()},
    }


def per_generator(
    y: ArrayLike, p: ArrayLike, generators: Sequence[Any] | npt.NDArray[Any], threshold: float
) -> list[dict[str, Any]]:
    """One row per generator: its AI rows against all real rows.

    ``detection_rate`` is the share of that generator's rows at or above the
    threshold (its TPR); AUROC and AP rank them against every real row.
    """
    yy, pp = _arrays(y, p)
    gens = np.asarray(generators, dtype=object).astype(str)
    real = ~yy
    rows = []
    for g in sorted(set(gens[yy].tolist())):
        sel = yy & (gens == g)
        both = sel | real
        rows.append(
            {
                "generator": g,
                "n": int(sel.sum()),
                "detection_rate": float(np.mean(pp[sel] >= threshold)),
                "mean_score": float(pp[sel].mean()),
                "auroc": auroc(yy[both], pp[both]),
                "average_precision": average_precision(yy[both], pp[both]),
                "tpr_at_1pct_fpr": tpr_at_fpr(yy[both], pp[both], 0.01),
            }
        )
    if real.any():
        rows.append(
            {
                "generator": "real",
                "n": int(real.sum()),
                "false_positive_rate": float(np.mean(pp[real] >= threshold)),
                "mean_score": float(pp[real].mean()),
            }
        )
    return rows


SHORTCUTS: dict[str, tuple[str, ...]] = {
    "fps_only": ("fps",),
    "duration_only": ("duration_s",),
    "metadata_all": ("fps", "duration_s", "width", "height"),
}
"""Metadata-only baselines: name -> the table columns they may read."""


def _metadata_matrix(table: FeatureTable, cols: Sequence[str], fill: FloatArray) -> FloatArray:
    x = np.stack([table.col(c).astype(np.float64) for c in cols], axis=1)
    bad = ~np.isfinite(x)
    x[bad] = np.broadcast_to(fill, x.shape)[bad]
    return x


def shortcut_baselines(
    train: FeatureTable, test: FeatureTable, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Fit a logistic regression on metadata alone per :data:`SHORTCUTS` entry
    (train rows only; missing values filled with the training median) and
    report its test metrics at the max-F1 threshold of its training rows."""
    from sklearn.linear_model import LogisticRegression

    from ..core.classifier import Scaler
    from .fitting import threshold_max_f1

    out: dict[str, dict[str, Any]] = {}
    y_train, y_test = train.labels, test.labels
    if len(set(y_train.tolist())) < 2 or len(test) == 0:
        return out
    for name, cols in SHORTCUTS.items():
        raw = np.stack([train.col(c).astype(np.float64) for c in cols], axis=1)
        fill = np.array(
            [np.nanmedian(c) if np.isfinite(c).any() else 0.0 for c in raw.T], dtype=np.float64
        )
        xtr = _metadata_matrix(train, cols, fill)
        xte = _metadata_matrix(test, cols, fill)
        scaler = Scaler.fit(xtr)
        model = LogisticRegression(max_iter=1000, random_state=seed).fit(
            scaler.transform(xtr), y_train
        )
        p_train = model.predict_proba(scaler.transform(xtr))[:, 1]
        p_test = model.predict_proba(scaler.transform(xte))[:, 1]
        thr = threshold_max_f1(p_train, y_train)
        res: dict[str, Any] = dict(binary_metrics(y_test, p_test, thr))
        res["columns"] = list(cols)
        out[name] = res
    return out


def real_vs_real_floor(
    table: FeatureTable,
    kind: str,
    seed: int = 0,
    repeats: int = 3,
    test_fraction: float = 0.3,
    fit: Callable[..., Any] = fit_classifier,
    **hyper: Any,
) -> dict[str, Any]:
    """Train ``kind`` to tell two random halves of the real rows apart (halves and
    train/test drawn by group), ``repeats`` times; report the test AUROCs.

    Near 0.5 means nothing but chance separates real from real; far from it, the
    pipeline leaks (e.g. windows of one clip on both sides). ``chance_sd`` is the
    spread of the mean AUROC expected from chance alone at these sizes.
    """
    real = table.select(table.labels == 0)
    groups = np.asarray(real.col("group"), dtype=object).astype(str)
    uniq = np.array(sorted(set(groups.tolist())))
    if len(uniq) < 8:
        return {"auroc": math.nan, "aurocs": [], "note": f"needs >= 8 real groups, got {len(uniq)}"}
    rng = np.random.default_rng(seed)
    aurocs: list[float] = []
    null_sds: list[float] = []
    for r in range(repeats):
        half = dict(zip(uniq, rng.permutation(len(uniq)) % 2))
        test_groups = set(rng.permutation(uniq)[: max(2, round(test_fraction * len(uniq)))])
        fake_y = np.array([half[g] for g in groups], dtype=np.float64)
        is_test = np.array([g in test_groups for g in groups])
        ytr, yte = fake_y[~is_test], fake_y[is_test]
        if len(set(ytr.tolist())) < 2 or len(set(yte.tolist())) < 2:
            continue
        clf = fit(real.features[~is_test], ytr, kind=kind, seed=seed + r, **hyper)
        aurocs.append(auroc(yte, clf.predict_proba(real.features[is_test])))
        n1, n0 = float(yte.sum()), float((1 - yte).sum())
        null_sds.append(math.sqrt((n1 + n0 + 1) / (12 * n1 * n0)))
    return {
        "auroc": float(np.mean(aurocs)) if aurocs else math.nan,
        "aurocs": aurocs,
        "repeats": len(aurocs),
        # AUROC's standard deviation under pure chance for these test sizes (Mann-Whitney),
        # averaged over repeats: a floor within ~3 of these of 0.5 is chance
        "chance_sd": float(np.mean(null_sds) / math.sqrt(len(null_sds))) if null_sds else math.nan,
    }


def json_ready(obj: Any) -> Any:
    """Replace NaN/inf by None and numpy scalars by Python ones, recursively."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


__all__ = [
    "METRIC_NAMES",
    "SHORTCUTS",
    "auroc",
    "average_precision",
    "binary_metrics",
    "bootstrap_ci",
    "ece",
    "evaluate_scores",
    "json_ready",
    "per_generator",
    "pr_points",
    "real_vs_real_floor",
    "roc_points",
    "shortcut_baselines",
    "tpr_at_fpr",
]
