"""Metrics against scikit-learn on the same predictions; bootstrap; baselines; floor."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from monitor.learn.evaluation import (
    auroc,
    average_precision,
    binary_metrics,
    bootstrap_ci,
    ece,
    evaluate_scores,
    per_generator,
    real_vs_real_floor,
    shortcut_baselines,
    tpr_at_fpr,
)
from monitor.learn.training import stratified_split

from .tables import synthetic_table


def _preds(n: int = 400, seed: int = 0, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = 1 / (1 + np.exp(-(1.5 * (2 * y - 1) + rng.normal(0, 1.5, n))))
    if ties:
        p = np.round(p, 1)
    return y, p


def _sk_tpr_at(y: np.ndarray, p: np.ndarray, target: float) -> float:
    fpr, tpr, _ = skm.roc_curve(y, p, drop_intermediate=False)
    return float(tpr[fpr <= target].max())


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_sklearn(seed: int, ties: bool) -> None:
    y, p = _preds(seed=seed, ties=ties)
    thr = 0.5
    m = binary_metrics(y, p, thr)
    pred = (p >= thr).astype(int)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=1e-12)
    assert m["f1"] == pytest.approx(skm.f1_score(y, pred), abs=1e-12)
    assert m["precision"] == pytest.approx(skm.precision_score(y, pred), abs=1e-12)
    assert m["tpr"] == pytest.approx(skm.recall_score(y, pred), abs=1e-12)
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert m["average_precision"] == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    assert m["tpr_at_1pct_fpr"] == pytest.approx(_sk_tpr_at(y, p, 0.01), abs=1e-12)
    assert m["tpr_at_0.1pct_fpr"] == pytest.approx(_sk_tpr_at(y, p, 0.001), abs=1e-12)
    # ECE from sklearn's calibration curve (same equal-width bins), weighted by bin size
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    ids = np.searchsorted(np.linspace(0, 1, 11)[1:-1], p)
    w = np.bincount(ids, minlength=10)
    w = w[w > 0] / len(p)
    assert m["ece"] == pytest.approx(float(np.sum(w * np.abs(prob_true - prob_pred))), abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 20)), min_size=2, max_size=60))
def test_auroc_and_ap_match_sklearn_on_any_input(rows: list[tuple[int, int]]) -> None:
    y = np.array([r[0] for r in rows])
    p = np.array([r[1] for r in rows], dtype=float) / 20
    if len(set(y.tolist())) < 2:
        assert math.isnan(auroc(y, p))
        return
    assert auroc(y, p) == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert average_precision(y, p) == pytest.approx(skm.average_precision_score(y, p), abs=1e-12)
    assert tpr_at_fpr(y, p, 0.1) == pytest.approx(_sk_tpr_at(y, p, 0.1), abs=1e-12)


def test_perfectly_calibrated_and_miscalibrated_ece() -> None:
    y = np.array([0] * 50 + [1] * 50)
    assert ece(y, np.where(y == 1, 1.0, 0.0)) == 0.0
    assert ece(y, np.full(100, 0.9)) == pytest.approx(0.4)


def test_bootstrap_is_seeded_and_brackets_the_estimate() -> None:
    y, p = _preds(300)
    a = bootstrap_ci(y, p, 0.5, n_boot=200, seed=7)
    b = bootstrap_ci(y, p, 0.5, n_boot=200, seed=7)
    c = bootstrap_ci(y, p, 0.5, n_boot=200, seed=8)
    assert a == b and a != c
    m = binary_metrics(y, p, 0.5)
    for name in ("accuracy", "auroc", "f1", "average_precision"):
        lo, hi = a[name]
        assert lo <= m[name] <= hi and hi - lo < 0.2


def test_bootstrap_by_clip_widens_intervals_of_correlated_windows() -> None:
    """Ten copies of each clip are not ten independent samples: clustering by clip
    gives the interval of the clips, not of the copies."""
    y, p = _preds(60, seed=3)
    yy, pp = np.repeat(y, 10), np.repeat(p, 10)
    clips = np.repeat(np.arange(60), 10)
    naive = bootstrap_ci(yy, pp, 0.5, n_boot=300, seed=0)["auroc"]
    clustered = bootstrap_ci(yy, pp, 0.5, clusters=clips, n_boot=300, seed=0)["auroc"]
    assert clustered[1] - clustered[0] > 1.8 * (naive[1] - naive[0])


def test_per_generator_rows() -> None:
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.9, 0.8, 0.95, 0.05, 0.4])
    gens = ["real"] * 4 + ["a", "a", "b", "b"]
    rows = {r["generator"]: r for r in per_generator(y, p, gens, 0.5)}
    assert rows["a"]["detection_rate"] == 1.0 and rows["b"]["detection_rate"] == 0.0
    assert rows["a"]["auroc"] == pytest.approx(skm.roc_auc_score([0] * 4 + [1, 1], p[:6]))
    assert rows["real"]["false_positive_rate"] == 0.25


def test_shortcut_baseline_finds_an_fps_shortcut_and_not_a_fair_set() -> None:
    unfair = synthetic_table(fps_shortcut=True, separation=0.0)
    s = stratified_split(unfair, 0.3, 0)
    res = shortcut_baselines(unfair.select(np.isin(unfair.col("clip_id"), s.train_clips)),
                             unfair.select(np.isin(unfair.col("clip_id"), s.test_clips)))
    assert res["fps_only"]["auroc"] == 1.0
    assert 0.3 < res["duration_only"]["auroc"] < 0.7
    fair = synthetic_table(fps_shortcut=False, separation=0.0, seed=1)
    s = stratified_split(fair, 0.3, 0)
    res = shortcut_baselines(fair.select(np.isin(fair.col("clip_id"), s.train_clips)),
                             fair.select(np.isin(fair.col("clip_id"), s.test_clips)))
    assert 0.25 < res["fps_only"]["auroc"] < 0.75


def test_real_vs_real_floor_is_near_chance() -> None:
    table = synthetic_table(n_real=80, groups_real=16)
    floor = real_vs_real_floor(table, "logreg", seed=0, repeats=4)
    assert floor["repeats"] >= 3
    assert 0.25 < floor["auroc"] < 0.75


def test_evaluate_scores_shape() -> None:
    y, p = _preds(100)
    out = evaluate_scores(y, p, 0.5, n_boot=50)
    assert set(out) == {"metrics", "ci95"} and len(out["ci95"]["auroc"]) == 2
