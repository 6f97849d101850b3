"""End to end on real encoded clips: extract -> train -> eval -> score, through the
CLI in fresh processes, with the tiny random backbone.

"Real" clips move a square in straight lines; the two "generators" make it jump
(two different random schedules). The tiny backbone's trajectories curve more
for the jumps, which is all a classifier needs here; nothing is claimed about
real footage.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from monitor.core.classifier import load_classifier
from monitor.core.pipeline import score_file
from monitor.learn.dataset import load_table
from monitor.learn.report import PLOTS
from monitor.learn.training import read_split, train

from .media import pattern_frame, write_clip

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SIDE = 12


def _real(k: int):  # type: ignore[no-untyped-def]
    def frame(i: int, w: int, h: int) -> np.ndarray:
        img = pattern_frame(0, w, h)
        x = (k * 5 + i * (1 + k % 3)) % (w - SIDE)
        y = (k * 3 + i * (1 + k % 2)) % (h - SIDE)
        img[y : y + SIDE, x : x + SIDE] = 255
        return img

    return frame


def _jumpy(k: int, gen: int):  # type: ignore[no-untyped-def]
    def frame(i: int, w: int, h: int) -> np.ndarray:
        img = pattern_frame(0, w, h)
        rng = np.random.default_rng(10_000 * gen + 100 * k + i)
        if gen == 1:  # anywhere
            x, y = int(rng.integers(0, w - SIDE)), int(rng.integers(0, h - SIDE))
        else:  # a random walk with large steps
            steps = np.random.default_rng(10_000 * gen + 100 * k).integers(-9, 10, (i + 1, 2))
            x = int(np.abs(steps[:, 0].sum() + 20) % (w - SIDE))
            y = int(np.abs(steps[:, 1].sum() + 15) % (h - SIDE))
        img[y : y + SIDE, x : x + SIDE] = 255
        return img

    return frame


@pytest.fixture(scope="module")
def labelled_clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("labelled")
    (root / "real").mkdir()
    (root / "ai" / "jump").mkdir(parents=True)
    (root / "ai" / "walk").mkdir(parents=True)
    for k in range(8):
        write_clip(root / "real" / f"r{k}.mp4", fps=24, n_frames=62, frame_fn=_real(k))
    for k in range(3):
        write_clip(root / "ai" / "jump" / f"j{k}.mp4", fps=24, n_frames=62, frame_fn=_jumpy(k, 1))
        write_clip(root / "ai" / "walk" / f"w{k}.mp4", fps=24, n_frames=62, frame_fn=_jumpy(k, 2))
    return root


def _cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )


def _last_json(stdout: str) -> Any:
    return json.loads(stdout.strip().splitlines()[-1])


IMAGE_SIZE = 112
"""A smaller model input than the paper's 224 px keeps this test quick on 2 CPU cores."""


@pytest.mark.slow
@pytest.mark.timeout(600)  # five fresh processes, each importing torch, on 2 shared cores
def test_extract_train_eval_score(
    labelled_clips: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from monitor.core.backbone import load_backbone
    from monitor.core.embed import Embedder

    config = tmp_path / "settings.yaml"
    config.write_text(f"model:\n  image_size: {IMAGE_SIZE}\n")
    model = ["--config", str(config), "--model", str(tiny_model_dir), "--device", "cpu",
             "--batch-size", "4"]
    embedder = Embedder(load_backbone(str(tiny_model_dir), "cpu", image_size=IMAGE_SIZE),
                        batch_size=4)
    table_dir, art, rep = tmp_path / "table", tmp_path / "art", tmp_path / "report"

    r = _cli("extract", str(labelled_clips), "--out", str(table_dir), "--all-windows",
             "--hop", "2", "--no-progress", *model)
    assert r.returncode == 0, r.stderr
    summary = _last_json(r.stdout)
    assert summary["extracted"] == 14 and summary["failed"] == 0

    r = _cli("train", str(table_dir), "--out", str(art), "--kind", "mlp", "--windows", "all",
             "--epochs", "100", "--test-fraction", "0.34", "--bootstrap", "200")
    assert r.returncode == 0, r.stderr
    trained = _last_json(r.stdout)
    assert trained["test"]["stratified"]["auroc"] >= 0.85
    assert (art / "classifier.safetensors").is_file()
    assert "image_size 112" in (art / "model_card.md").read_text()

    r = _cli("eval", str(table_dir), "-c", str(art), "--out", str(rep), "--bootstrap", "200")
    assert r.returncode == 0, r.stderr
    report = json.loads((rep / "report.json").read_text())
    assert report["split"] == "stratified" and report["windows"] == "all"
    assert report["model"]["metrics"]["auroc"] >= 0.85
    lo, hi = report["model"]["ci95"]["auroc"]
    assert lo <= report["model"]["metrics"]["auroc"] <= hi
    # the shortcut baselines ran beside the model: every clip is 24 fps and 2.58 s,
    # so metadata alone cannot tell the classes apart
    assert set(report["shortcuts"]) == {"fps_only", "duration_only", "metadata_all"}
    assert report["shortcuts"]["fps_only"]["auroc"] == pytest.approx(0.5)
    assert report["real_vs_real_floor"]["repeats"] >= 1
    assert {g["generator"] for g in report["per_generator"]} == {"jump", "walk", "real"}
    md = (rep / "report.md").read_text()
    for needle in ("Is it a shortcut?", "fps_only", "duration_only", "Real-vs-real floor",
                   "![ROC](roc.png)", "timeline.png"):
        assert needle in md
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg

    for name in PLOTS:
        data = (rep / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE, name
        img = mpimg.imread(rep / name)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        assert float(np.std(img)) > 0.01  # not a blank canvas

    # the artifact, reloaded in this process and in a fresh one, gives the same scores
    clf = load_classifier(art)
    table = load_table(table_dir)
    split = read_split(art)
    assert split is not None
    test_centre = table.windows("centre").select(
        np.isin(table.windows("centre").col("clip_id"), split["test"]))
    p_here = clf.predict_proba(test_centre.features)
    np.save(tmp_path / "x.npy", test_centre.features)
    x_npy, p_npy = str(tmp_path / "x.npy"), str(tmp_path / "p.npy")
    code = ("import numpy as np; from pathlib import Path; "
            "from monitor.core.classifier import load_classifier; "
            f"p = load_classifier(Path({str(art)!r})).predict_proba(np.load({x_npy!r})); "
            f"np.save({p_npy!r}, p)")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=120)
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), p_here)

    # `restrav score --classifier` in a fresh process: same scores as in-process scoring
    paths = [str(p) for p in test_centre.col("path")]
    r = _cli("score", "-c", str(art), *model, *paths)
    assert r.returncode == 0, r.stderr
    scored = {o["path"]: o for o in map(json.loads, r.stdout.strip().splitlines())}
    for path, p_table in zip(paths, p_here):
        fresh = scored[path]["window"]["score"]
        inproc = score_file(path, embedder, clf).centre.p_ai
        assert fresh == pytest.approx(inproc, abs=1e-6)
        assert fresh == pytest.approx(float(p_table), abs=1e-6)
        assert scored[path]["window"]["threshold"] == pytest.approx(clf.threshold)

    # the training-free kinds serve through the same pipeline
    for kind in ("mean_curvature", "one_class"):
        tf = train(table, kind=kind, n_boot=0).classifier
        tf.save(tmp_path / kind)
        res = score_file(paths[0], embedder, load_classifier(tmp_path / kind))
        assert res.centre.p_ai is not None and 0.0 <= res.centre.p_ai <= 1.0
        assert res.to_json()["window"]["is_ai"] in (True, False)
