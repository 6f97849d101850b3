"""Every classifier kind round-trips through its artifact (JSON + safetensors) and
predicts exactly what the fitted scikit-learn model predicts on the same rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from monitor.core.classifier import (
    KINDS,
    PROBA,
    THETA_MEAN,
    Classifier,
    Scaler,
    load_classifier,
    mahalanobis_sq,
)
from monitor.learn.fitting import fit_classifier, fit_kind, threshold_for_fpr
from monitor.types import N_FEATURES


def _data(n: int = 240, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(np.float64)
    x = rng.normal(size=(n, N_FEATURES)) * np.linspace(1, 50, N_FEATURES)
    x[:, THETA_MEAN] = 95 + 6 * y + rng.normal(0, 3, n)  # AI curves more
    x[:, 3] += 20 * y
    return x, y


SMALL = {"n_trees": 30, "rounds": 40}


@pytest.mark.parametrize(
    "kind", ["logreg", "gaussian_nb", "random_forest", "gradient_boosting", "svm_rbf"]
)
def test_exported_kind_predicts_like_sklearn(kind: str) -> None:
    x, y = _data()
    scaler = Scaler.fit(x[:160])
    xs_train, xs_test = scaler.transform(x[:160]), scaler.transform(x[160:])
    params, model = fit_kind(kind, xs_train, y[:160], seed=1, **SMALL)
    ours = PROBA[kind](params, xs_test)
    if kind == "svm_rbf":
        from monitor.core.classifier import svm_decision

        np.testing.assert_allclose(
            svm_decision(params, xs_test), model.decision_function(xs_test), rtol=1e-9, atol=1e-9
        )
        a, b = params["svm.platt_a"][0], params["svm.platt_b"][0]
        expected = 1 / (1 + np.exp(-(a * model.decision_function(xs_test) + b)))
    else:
        expected = model.predict_proba(xs_test)[:, 1]
    np.testing.assert_allclose(ours, expected, rtol=1e-9, atol=1e-12)
    # and it learned something: AUROC well above chance on held-out rows
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y[160:], ours) > 0.8


def test_forest_traversal_matches_sklearn_apply() -> None:
    """Every row reaches the same leaf as sklearn's own traversal, tree by tree."""
    from monitor.core.classifier import forest_leaf_values

    x, y = _data(seed=3)
    xs = Scaler.fit(x).transform(x)
    params, rf = fit_kind("random_forest", xs, y, seed=0, n_trees=12, max_depth=6)
    leaves = forest_leaf_values(params, xs)
    for t, est in enumerate(rf.estimators_):
        v = est.tree_.value[est.apply(xs.astype(np.float32)), 0, :]
        np.testing.assert_allclose(leaves[:, t], v[:, 1] / v.sum(axis=1), rtol=0, atol=1e-15)


def test_one_class_distance_matches_sklearn() -> None:
    x, y = _data()
    real = Scaler.fit(x[y == 0])
    params, lw = fit_kind("one_class", real.transform(x), y)
    np.testing.assert_allclose(
        mahalanobis_sq(params, real.transform(x)), lw.mahalanobis(real.transform(x)), rtol=1e-9
    )


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_round_trips(kind: str, tmp_path: Path) -> None:
    x, y = _data()
    clf = fit_classifier(x, y, kind=kind, seed=2, epochs=3, **SMALL)
    p = clf.predict_proba(x)
    assert p.shape == (len(x),) and np.all((p >= 0) & (p <= 1))
    clf.save(tmp_path / "art")
    assert not list((tmp_path / "art").glob("*.pkl"))
    back = load_classifier(tmp_path / "art")
    assert back.kind == kind and back.threshold == clf.threshold
    np.testing.assert_array_equal(back.predict_proba(x), p)


def test_mean_curvature_is_monotone_in_feature_17() -> None:
    x, y = _data()
    clf = fit_classifier(x, y, kind="mean_curvature")
    order = np.argsort(x[:, THETA_MEAN])
    assert np.all(np.diff(clf.predict_proba(x)[order]) >= 0)
    np.testing.assert_allclose(clf.params["centre"][0], x[y == 0, THETA_MEAN].mean())
    # other features do not matter
    x2 = x.copy()
    x2[:, :THETA_MEAN] = 0
    np.testing.assert_array_equal(clf.predict_proba(x2), clf.predict_proba(x))


@pytest.mark.parametrize("kind", ["mean_curvature", "one_class"])
def test_training_free_kinds_learn_from_real_rows_only(kind: str) -> None:
    x, y = _data()
    real_only = fit_classifier(x[y == 0], y[y == 0], kind=kind, target_fpr=0.05)
    with_ai = fit_classifier(x, y, kind=kind, target_fpr=0.05)
    np.testing.assert_allclose(real_only.predict_proba(x), with_ai.predict_proba(x))
    # the threshold holds the asked false-positive rate on the real rows
    fpr = np.mean(real_only.predict_proba(x[y == 0]) >= real_only.threshold)
    assert fpr <= 0.05
    assert real_only.threshold == threshold_for_fpr(real_only.predict_proba(x[y == 0]), 0.05)


def test_one_class_scores_outliers_higher() -> None:
    x, y = _data()
    clf = fit_classifier(x[y == 0], y[y == 0], kind="one_class")
    far = x[y == 0][:5] + 30 * x[y == 0].std(axis=0)
    assert clf.predict_proba(far).min() > clf.predict_proba(x[y == 0]).max()


def test_supervised_kind_refuses_one_class_labels() -> None:
    x, y = _data()
    with pytest.raises(ValueError, match="both classes"):
        fit_classifier(x[y == 0], y[y == 0], kind="gaussian_nb")


def test_mlp_and_logreg_keep_their_logit_form() -> None:
    from monitor.core.classifier import LOGITS

    x, y = _data()
    for kind in ("mlp", "logreg"):
        clf: Classifier = fit_classifier(x, y, kind=kind, epochs=2)
        z = LOGITS[kind](clf.params, clf.scaler.transform(x))
        np.testing.assert_allclose(clf.predict_proba(x), 1 / (1 + np.exp(-z)), rtol=1e-12)


def test_artifact_missing_an_array_is_refused(tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    from monitor.errors import ArtifactError

    x, y = _data()
    fit_classifier(x, y, kind="gaussian_nb").save(tmp_path / "a")
    tensors = load_file(str(tmp_path / "a" / "classifier.safetensors"))
    del tensors["param.nb.var"]
    save_file(tensors, str(tmp_path / "a" / "classifier.safetensors"))
    with pytest.raises(ArtifactError, match=r"lacks arrays \['nb.var'\]"):
        load_classifier(tmp_path / "a")
