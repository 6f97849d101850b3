"""The evaluation report for the less common cases: a leave-one-generator-out
artifact (no held-out clips of its own) and a one-class model of real footage."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np

from monitor.learn.model_card import write_training_outputs
from monitor.learn.report import PLOTS, evaluate_artifact, write_report
from monitor.learn.training import read_split, train

from .tables import synthetic_table


def _pngs_ok(d: Path) -> None:
    for name in PLOTS:
        assert (d / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert mpimg.imread(d / name).ndim == 3


def test_logo_artifact_report_says_it_is_in_sample(tmp_path: Path) -> None:
    table = synthetic_table(windows_per_clip=3)
    result = train(table, kind="random_forest", mode="logo", n_boot=20, n_trees=20)
    write_training_outputs(result, tmp_path / "a")
    training = json.loads((tmp_path / "a" / "training.json").read_text())
    assert [f["split"] for f in training["folds"]] == ["logo:gen_a", "logo:gen_b"]
    report = evaluate_artifact(table, result.classifier, read_split(tmp_path / "a"), n_boot=20)
    assert report["split"] == "all rows" and "in-sample" in report["note"]
    write_report(report, tmp_path / "r")
    assert "in-sample" in (tmp_path / "r" / "report.md").read_text()
    _pngs_ok(tmp_path / "r")


def test_one_class_report_on_real_only_and_mixed_tables(tmp_path: Path) -> None:
    table = synthetic_table(windows_per_clip=3)
    real = table.select(table.labels == 0)
    result = train(real, kind="one_class", n_boot=20)
    write_training_outputs(result, tmp_path / "a")
    report = evaluate_artifact(real, result.classifier, read_split(tmp_path / "a"), n_boot=20)
    write_report(report, tmp_path / "r1")  # one class: curves are empty, nothing breaks
    _pngs_ok(tmp_path / "r1")
    assert report["shortcuts"] == {}
    saved = json.loads((tmp_path / "r1" / "report.json").read_text())
    assert saved["model"]["metrics"]["auroc"] is None  # NaN is written as null
    report = evaluate_artifact(table, result.classifier, None, n_boot=20)
    assert report["model"]["metrics"]["auroc"] > 0.7  # unseen AI clips fall outside
    write_report(report, tmp_path / "r2")
    _pngs_ok(tmp_path / "r2")


def test_a_table_of_new_clips_is_evaluated_whole(tmp_path: Path) -> None:
    train_table = synthetic_table(seed=0)
    result = train(train_table, kind="logreg", n_boot=0)
    write_training_outputs(result, tmp_path / "a")
    new = synthetic_table(seed=5)
    new.columns["clip_id"] = np.array(["new/" + c for c in new.col("clip_id")], dtype=object)
    report = evaluate_artifact(new, result.classifier, read_split(tmp_path / "a"), n_boot=0)
    assert report["split"] == "external" and report["test_clips"] == len(new.clip_ids())
    assert report["model"]["metrics"]["auroc"] > 0.9


def test_timeline_legend_shows_clip_ids_starting_with_underscore() -> None:
    """matplotlib drops legend labels that start with `_`: clip ids may (``_cam1/a.mp4``)."""
    from monitor.learn.plots import draw_timeline, pyplot

    plt = pyplot()
    fig, ax = plt.subplots()
    report = {
        "_timeline": [
            {"clip_id": "_cam1/a.mp4", "label": 1, "grid": True, "start_s": [0.0, 1.0],
             "score": [0.2, 0.9]},
            {"clip_id": "real/b.mp4", "label": 0, "grid": False, "start_s": [0.0],
             "score": [0.1]},
        ],
        "artifact": {"threshold": 0.5},
    }
    draw_timeline(report, ax)
    texts = [t.get_text().strip() for t in ax.get_legend().get_texts()]
    plt.close(fig)
    assert texts == ["_cam1/a.mp4 (AI)", "real/b.mp4 (real)", "threshold"]
