"""Classifier training, thresholds and artifacts that load without executing code (SPEC 6)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor import FEATURE_SPEC_VERSION
from monitor.core.classifier import (
    META_FILE,
    TENSOR_FILE,
    Scaler,
    load_classifier,
)
from monitor.errors import ArtifactError
from monitor.learn.fitting import fit_classifier, threshold_for_fpr, threshold_max_f1


def separable(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 21)) * 10 + 100
    x[:, 17] += np.where(y == 1, 40.0, 0.0)  # AI: higher mean curvature
    return x, y


@pytest.mark.parametrize("kind", ["mlp", "logreg"])
def test_fit_save_load_round_trip(tmp_path: Path, kind: str) -> None:
    x, y = separable()
    clf = fit_classifier(x, y, kind=kind, epochs=30, backbone="tiny")
    p = clf.predict_proba(x)
    assert p.shape == (len(y),) and np.all((p >= 0) & (p <= 1))
    assert np.mean((p >= 0.5) == (y == 1)) > 0.9  # positive class = AI-generated
    clf.save(tmp_path / "art")
    files = sorted(f.name for f in (tmp_path / "art").iterdir())
    assert files == [META_FILE, TENSOR_FILE]
    meta = json.loads((tmp_path / "art" / META_FILE).read_text())
    assert meta["feature_spec"] == FEATURE_SPEC_VERSION
    assert meta["positive_class"] == "ai-generated"
    assert meta["backbone"] == "tiny" and len(meta["feature_names"]) == 21
    again = load_classifier(tmp_path / "art")
    np.testing.assert_array_equal(again.predict_proba(x), p)
    assert again.threshold == clf.threshold
    assert again.threshold_mode == clf.threshold_mode and again.summary == clf.summary
    assert again.backbone == "tiny"
    np.testing.assert_array_equal(again.predict_proba(x[0]), p[:1])  # one row is accepted
    with pytest.raises(ValueError, match="expected 21 features per row, got 5"):
        again.predict_proba(x[:, :5])
    # into a folder not there yet (parents made), and over an earlier artifact
    clf.save(tmp_path / "new" / "nested")
    again.save(tmp_path / "art")
    assert load_classifier(tmp_path / "new" / "nested").threshold == clf.threshold


def test_fpr_threshold_holds_on_training_real_rows() -> None:
    x, y = separable(400, seed=1)
    clf = fit_classifier(x, y, kind="logreg", threshold_mode="fpr", target_fpr=0.05)
    p = clf.predict_proba(x)
    assert np.mean(p[y == 0] >= clf.threshold) <= 0.05
    assert clf.threshold_mode == "fpr<=0.05"


def fpr_at(real: np.ndarray, t: float) -> float:
    # in float64, as P(AI) is: a float32 array would compare at float32 (NEP 50)
    return float(np.mean(np.asarray(real, dtype=np.float64) >= t))


def test_threshold_helpers() -> None:
    real = np.linspace(0, 1, 101)
    t = threshold_for_fpr(real, 0.1)
    # pinned from both sides: the rate is met, and the next lower float breaks it
    assert fpr_at(real, t) <= 0.1 < fpr_at(real, np.nextafter(t, -np.inf))
    assert np.sum(real >= t) == 10  # ten of 101 real rows may be flagged, and are
    assert threshold_for_fpr(real, 0.0) > 1.0
    assert fpr_at(real, threshold_for_fpr(real, 1.0)) == 1.0
    # float32 scores: the threshold is still the smallest in float64, where it is compared
    real32 = real.astype(np.float32)
    t32 = threshold_for_fpr(real32, 0.1)
    assert fpr_at(real32, t32) <= 0.1 < fpr_at(real32, np.nextafter(t32, -np.inf))
    with pytest.raises(ValueError, match=r"^no real rows to set a false-positive-rate thr"):
        threshold_for_fpr([], 0.1)
    # a target just below 9 / 10 whose product with 10 rounds up to 9: only 8 may be flagged
    ten = np.arange(10) / 10
    below = float(np.nextafter(0.9, 0.0))
    t = threshold_for_fpr(ten, below)
    assert fpr_at(ten, t) <= below < fpr_at(ten, np.nextafter(t, -np.inf))
    # 0.29 * 100 rounds down to 28.999...: still 29 real rows may be flagged
    hundred = np.arange(100) / 100
    assert np.sum(hundred >= threshold_for_fpr(hundred, 0.29)) == 29
    s = np.array([0.1, 0.4, 0.6, 0.9])
    assert threshold_max_f1(s, np.array([0, 0, 1, 1])) == 0.6


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.floats(0.0, 1.0), min_size=1, max_size=60),
    st.floats(0.0, 0.999),
)
def test_threshold_for_fpr_is_the_smallest_that_meets_the_rate(
    scores: list[float], target: float
) -> None:
    real = np.asarray(scores)
    t = threshold_for_fpr(real, target)
    assert fpr_at(real, t) <= target
    assert fpr_at(real, np.nextafter(t, -np.inf)) > target


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.1, 0.2, 0.3, 0.5, 0.7, 0.9]), st.booleans()),
                min_size=1, max_size=30))
def test_threshold_max_f1_is_the_smallest_threshold_of_the_best_f1(
    rows: list[tuple[float, bool]]
) -> None:
    """Against a brute-force reference (scikit-learn's f1_score at every distinct score):
    the threshold of the highest F1, the lowest such threshold when several tie."""
    from sklearn.metrics import f1_score

    s = np.array([r[0] for r in rows])
    y = np.array([r[1] for r in rows], dtype=int)
    f1 = {t: f1_score(y, s >= t, zero_division=0.0) for t in np.unique(s)}
    best = max(f1.values())
    want = min(t for t, v in f1.items() if np.isclose(v, best, rtol=0, atol=1e-12))
    assert threshold_max_f1(s, y) == want


def test_threshold_max_f1_edges() -> None:
    # the top score is real: no threshold there (F1 0) may win
    assert threshold_max_f1(np.array([0.2, 0.6, 0.9]), np.array([1, 1, 0])) == 0.2
    assert threshold_max_f1(np.array([]), np.array([])) == 0.5  # nothing to fit: the default


def test_backbone_mismatches_name_each_differing_option() -> None:
    x, y = separable()
    clf = fit_classifier(x, y, kind="logreg")
    clf.summary["backbone_options"] = {"image_size": 224, "normalize": True, "dtype": "float32"}
    assert clf.backbone_mismatches({"image_size": 224, "normalize": True}) == []
    assert clf.backbone_mismatches({"image_size": 448, "normalize": False, "batch": 8}) == [
        "image_size: trained with 224, now 448", "normalize: trained with True, now False"]
    clf.summary.pop("backbone_options")
    assert clf.backbone_mismatches({"image_size": 448}) == []  # nothing recorded


def test_scaler_is_fitted_on_what_it_is_given_only() -> None:
    x = np.arange(42, dtype=float).reshape(2, 21)
    s = Scaler.fit(x)
    np.testing.assert_allclose(s.transform(x).mean(axis=0), 0.0)
    np.testing.assert_allclose(s.mean, x.mean(axis=0))
    np.testing.assert_allclose(s.std, x.std(axis=0))  # per column
    # float32 rows are fitted in float64; a constant feature keeps its raw units
    rows = (np.random.default_rng(3).normal(size=(50, 21)) * 10 + 100).astype(np.float32)
    rows[:, 4] = 7.0
    s32 = Scaler.fit(rows)
    assert s32.mean.dtype == np.float64 and s32.std.dtype == np.float64
    np.testing.assert_array_equal(s32.mean, rows.astype(np.float64).mean(axis=0))
    assert s32.std[4] == 1.0 and s32.transform(rows[:1] + 3.0)[0, 4] == 3.0


def test_bad_artifacts(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError) as err:
        load_classifier(tmp_path)
    assert str(err.value) == (f"{tmp_path}: not a classifier artifact (needs {META_FILE} and "
                              f"{TENSOR_FILE}); train one with `restrav train`")
    x, y = separable()
    for name in ("b", "c"):
        fit_classifier(x, y, kind="logreg").save(tmp_path / name)
    assert load_classifier(tmp_path / "b" / META_FILE).kind == "logreg"  # the json's path
    with pytest.raises(ArtifactError, match="not a classifier artifact"):
        load_classifier(tmp_path / "b" / TENSOR_FILE)  # another file of it is not
    (tmp_path / "b" / TENSOR_FILE).unlink()
    (tmp_path / "c" / META_FILE).unlink()
    for half in ("b", "c"):  # either file alone is not an artifact
        with pytest.raises(ArtifactError, match=r"not a classifier artifact.*`restrav train`"):
            load_classifier(tmp_path / half)
    # an artifact written before threshold_mode, backbone and summary were recorded
    fit_classifier(x, y, kind="logreg").save(tmp_path / "old")
    meta = json.loads((tmp_path / "old" / META_FILE).read_text())
    for key in ("threshold", "threshold_mode", "backbone", "summary"):
        meta.pop(key)
    (tmp_path / "old" / META_FILE).write_text(json.dumps(meta))
    old = load_classifier(tmp_path / "old")
    assert (old.threshold, old.threshold_mode, old.backbone, old.summary) == (0.5, "fixed", "", {})
    fit_classifier(x, y, kind="logreg").save(tmp_path / "a")
    meta = json.loads((tmp_path / "a" / META_FILE).read_text())
    meta["feature_spec"] = "restrav-21/0"
    (tmp_path / "a" / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="feature spec 'restrav-21/0' != "):
        load_classifier(tmp_path / "a")
    meta["feature_spec"], meta["kind"] = FEATURE_SPEC_VERSION, "pickle"
    (tmp_path / "a" / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="unknown classifier kind"):
        load_classifier(tmp_path / "a")
    meta["kind"] = "logreg"
    (tmp_path / "a" / META_FILE).write_text(json.dumps({**meta, "params": ["nope"]}))
    with pytest.raises(ArtifactError, match=r"artifact lacks tensor 'param\.nope'"):
        load_classifier(tmp_path / "a")
    (tmp_path / "a" / TENSOR_FILE).write_bytes(b"\x80\x04garbage")
    with pytest.raises(ArtifactError, match="unreadable artifact: "):
        load_classifier(tmp_path / "a")


def test_fit_rejects_single_class_and_wrong_width() -> None:
    x, _ = separable()
    with pytest.raises(ValueError, match="both classes"):
        fit_classifier(x, np.zeros(len(x)))
    with pytest.raises(ValueError):
        fit_classifier(x[:, :20], np.arange(len(x)) % 2)


def test_artifact_keeps_its_feature_convention_and_provenance(tmp_path: Path) -> None:
    """What an artifact says about its inputs and origin comes back as written, an old
    artifact without them reads as SPEC's convention with no provenance, and a
    convention that names none is refused with what the allowed ones are."""
    x, y = separable()
    clf = fit_classifier(x, y, kind="logreg")
    clf.zero_step_angle_deg = 90.0
    clf.provenance = {"source": "upstream", "sha256": {"weights.pt": "ab" * 32}}
    clf.save(tmp_path / "up")
    meta = json.loads((tmp_path / "up" / META_FILE).read_text(encoding="utf-8"))
    assert meta["zero_step_angle_deg"] == 90.0 and meta["provenance"] == clf.provenance
    assert meta["params"] == ["coef", "intercept"] and meta["kind"] == "logreg"
    back = load_classifier(tmp_path / "up")
    assert back.zero_step_angle_deg == 90.0 and back.provenance == clf.provenance
    assert sorted(back.params) == ["coef", "intercept"]
    np.testing.assert_array_equal(back.scaler.mean, clf.scaler.mean)
    np.testing.assert_array_equal(back.scaler.std, clf.scaler.std)

    clf.provenance = {}
    clf.save(tmp_path / "here")  # trained here: no provenance key at all
    assert "provenance" not in json.loads((tmp_path / "here" / META_FILE).read_text())
    for key in ("zero_step_angle_deg", "provenance"):
        meta.pop(key)
    (tmp_path / "up" / META_FILE).write_text(json.dumps(meta))
    old = load_classifier(tmp_path / "up")
    assert (old.zero_step_angle_deg, old.provenance) == (0.0, {})
    (tmp_path / "up" / META_FILE).write_text(json.dumps({**meta, "zero_step_angle_deg": 45}))
    with pytest.raises(ArtifactError) as err:
        load_classifier(tmp_path / "up")
    assert str(err.value) == (f"{tmp_path / 'up'}: zero_step_angle_deg must be 0 (SPEC) or "
                              "90 (upstream code), got 45")
    assert err.value.__cause__ is None and err.value.__suppress_context__
    (tmp_path / "up" / META_FILE).write_text(json.dumps({**meta, "feature_spec": "old"}))
    with pytest.raises(ArtifactError) as err:
        load_classifier(tmp_path / "up")
    assert str(err.value) == (f"{tmp_path / 'up'}: feature spec 'old' != "
                              f"{FEATURE_SPEC_VERSION!r}; retrain on features from this version")
    (tmp_path / "up" / META_FILE).write_text(json.dumps({**meta, "kind": "pickle"}))
    with pytest.raises(ArtifactError) as err:
        load_classifier(tmp_path / "up")
    assert str(err.value) == f"{tmp_path / 'up'}: unknown classifier kind 'pickle'"
