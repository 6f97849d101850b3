"""Splits never leak (clips, groups), the scaler never sees test rows, and a
training run writes an artifact, split file and model card that load back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.core import classifier as classifier_mod
from monitor.core.classifier import load_classifier
from monitor.errors import ConfigError
from monitor.learn.dataset import FeatureTable
from monitor.learn.model_card import write_training_outputs
from monitor.learn.training import (
    CARD_FILE,
    SPLIT_FILE,
    group_split,
    logo_splits,
    read_split,
    select_rows,
    stratified_split,
    train,
)

from .tables import synthetic_table


def _groups_of(table: FeatureTable, clips: tuple[str, ...]) -> set[str]:
    sel = np.isin(table.col("clip_id"), clips)
    return set(table.col("group")[sel].tolist())


def test_stratified_split_is_by_clip_and_keeps_every_generator() -> None:
    table = synthetic_table(windows_per_clip=4)
    s = stratified_split(table, 0.25, seed=0)
    assert not set(s.train_clips) & set(s.test_clips)
    assert set(s.train_clips) | set(s.test_clips) == set(table.clip_ids())
    test_gens = set(table.col("generator")[np.isin(table.col("clip_id"), s.test_clips)])
    assert test_gens == {"real", "gen_a", "gen_b"}


@settings(max_examples=25, deadline=None)
@given(
    groups=st.integers(4, 15),
    seed=st.integers(0, 10_000),
    fraction=st.sampled_from([0.2, 0.25, 0.34, 0.5]),
)
def test_group_split_never_shares_a_group(groups: int, seed: int, fraction: float) -> None:
    table = synthetic_table(n_real=30, groups_real=groups, n_per_gen=10, seed=seed % 7)
    try:
        s = group_split(table, fraction, seed)
    except ConfigError:
        assert groups + 20 < round(1 / fraction)  # too few groups is the only refusal
        return
    assert not _groups_of(table, s.train_clips) & _groups_of(table, s.test_clips)
    assert s.test_clips and s.train_clips


def test_logo_holds_out_one_generator_and_a_fixed_real_share() -> None:
    table = synthetic_table(generators=("a", "b", "c"), n_per_gen=8)
    folds = logo_splits(table, 0.25, seed=0)
    assert [f.name for f in folds] == ["logo:a", "logo:b", "logo:c"]
    real_tests = []
    for f, g in zip(folds, "abc"):
        test_gens = set(table.col("generator")[np.isin(table.col("clip_id"), f.test_clips)])
        train_gens = set(table.col("generator")[np.isin(table.col("clip_id"), f.train_clips)])
        assert test_gens == {"real", g} and g not in train_gens
        assert not _groups_of(table, f.train_clips) & _groups_of(table, f.test_clips)
        real_tests.append({c for c in f.test_clips if c.startswith("real/")})
    assert real_tests[0] == real_tests[1] == real_tests[2]


def test_select_rows_all_windows_keeps_clip_rows_together() -> None:
    table = synthetic_table(windows_per_clip=5)
    s = stratified_split(table, 0.25, 0)
    rows = select_rows(table, s.test_clips, "all")
    assert set(rows.col("window")) == {"grid"}
    assert set(rows.col("clip_id")) == set(s.test_clips)
    assert len(rows) == 5 * len(s.test_clips)


@pytest.mark.parametrize("kind", ["mlp", "random_forest", "one_class"])
@pytest.mark.parametrize("mode", ["stratified", "group", "logo"])
def test_scaler_never_sees_test_rows(
    kind: str, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    table = synthetic_table(windows_per_clip=2)
    # mark every row with a unique value in a feature so rows can be recognised
    table.columns["d_6"] = np.arange(len(table), dtype=np.float64) + 1e6
    seen: list[np.ndarray] = []
    real_fit = classifier_mod.Scaler.fit.__func__  # type: ignore[attr-defined]

    def spy(cls: Any, x: Any) -> Any:
        a = np.asarray(x)
        if a.shape[1] == 21:  # the feature scaler (the metadata baselines have their own)
            seen.append(a[:, 6].copy())
        return real_fit(cls, x)

    monkeypatch.setattr(classifier_mod.Scaler, "fit", classmethod(spy))
    result = train(table, kind=kind, mode=mode, windows="all", n_boot=0, epochs=1,  # type: ignore[arg-type]
                   n_trees=10)
    assert len(seen) == len(result.folds) + (1 if mode == "logo" else 0)
    for fold, rows in zip(result.folds, seen):
        test_marks = table.col("d_6")[np.isin(table.col("clip_id"), fold.split.test_clips)]
        train_marks = table.col("d_6")[np.isin(table.col("clip_id"), fold.split.train_clips)]
        assert not np.isin(rows, test_marks).any()
        assert np.isin(rows, train_marks).all()


def test_train_writes_artifact_card_and_split(tmp_path: Path) -> None:
    table = synthetic_table()
    result = train(table, kind="logreg", mode="group", n_boot=100, seed=3)
    write_training_outputs(result, tmp_path / "art")
    clf = load_classifier(tmp_path / "art")
    assert clf.kind == "logreg" and clf.threshold_mode == "fpr<=0.01"
    split = read_split(tmp_path / "art")
    assert split is not None and split["name"] == "group"
    assert set(split["test"]) == set(result.folds[0].split.test_clips)
    card = (tmp_path / "art" / CARD_FILE).read_text()
    for needle in ("restrav-21/1", "Shortcut baselines", "fps_only", "duration_only",
                   "Held-out metrics", "gen_a", "fpr<=0.01"):
        assert needle in card
    training = json.loads((tmp_path / "art" / "training.json").read_text())
    assert training["folds"][0]["metrics"]["auroc"] > 0.9  # 6 degrees of curvature separate
    # same predictions from the reloaded artifact
    x = table.features
    np.testing.assert_array_equal(clf.predict_proba(x), result.classifier.predict_proba(x))
    assert (tmp_path / "art" / SPLIT_FILE).is_file()


def test_max_f1_threshold_option() -> None:
    result = train(synthetic_table(), kind="gaussian_nb", threshold_mode="f1", n_boot=0)
    assert result.classifier.threshold_mode == "max-f1"


def test_logo_ships_a_model_fitted_on_all_clips() -> None:
    table = synthetic_table()
    result = train(table, kind="logreg", mode="logo", n_boot=0)
    assert len(result.folds) == 2
    assert result.classifier.summary["rows"] == len(table.windows("centre"))


@pytest.mark.parametrize("kind", ["one_class", "mean_curvature"])
def test_training_free_kinds_train_on_real_only_tables(kind: str, tmp_path: Path) -> None:
    table = synthetic_table()
    real = table.select(table.labels == 0)
    result = train(real, kind=kind, n_boot=50)
    assert result.classifier.kind == kind
    write_training_outputs(result, tmp_path / kind)
    back = load_classifier(tmp_path / kind)
    # trained on real clips only, it still scores the (never seen) AI clips higher
    p = back.predict_proba(table.features)
    assert p[table.labels == 1].mean() > p[table.labels == 0].mean()
    assert "Model card" in (tmp_path / kind / CARD_FILE).read_text()
    with pytest.raises(ValueError, match="both classes"):
        train(synthetic_table().select(synthetic_table().labels == 0), kind="mlp", n_boot=0)


def test_cli_train_and_eval_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from monitor.learn.dataset import load_table, write_table
    from workers.cli import main

    table = synthetic_table(fps_shortcut=True)
    write_table(table, tmp_path / "t")
    assert len(load_table(tmp_path / "t")) == len(table)
    assert main(["train", str(tmp_path / "t"), "--out", str(tmp_path / "a"), "--kind",
                 "gaussian_nb", "--split", "group", "--bootstrap", "50"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["kind"] == "gaussian_nb" and "group" in out["test"]
    assert main(["eval", str(tmp_path / "t"), "-c", str(tmp_path / "a"), "--out",
                 str(tmp_path / "r"), "--bootstrap", "50", "--floor-repeats", "2"]) == 0
    captured = capsys.readouterr()
    # every AI clip is 8 fps and every real one 30 fps: the report must say so
    assert "shortcut baseline fps_only reaches AUROC 1.000" in captured.err
    assert "metadata alone separates" in (tmp_path / "r" / "report.md").read_text()
    # bad data gets a clear message and exit status 3, not a traceback
    real = table.select(table.labels == 0)
    write_table(real, tmp_path / "real")
    assert main(["train", str(tmp_path / "real"), "--out", str(tmp_path / "b")]) == 3
    assert "cannot train mlp" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing"), "--out", str(tmp_path / "c")]) == 3
    assert "no such feature table" in capsys.readouterr().err
