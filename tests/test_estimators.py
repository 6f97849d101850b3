"""The scikit-learn API (monitor.estimators): sklearn's own estimator checks, the
transformer conventions, equality with window_features and `restrav score` on the
shared clips, and a Pipeline saved in Python and served by the CLI."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, GroupKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from monitor.core.classifier import load_classifier
from monitor.core.geometry import trajectory_steps, window_features
from monitor.estimators import ReStraVClassifier, TrajectoryFeatures, VideoEmbedder, save_pipeline
from monitor.learn.feature_estimators import _as_trajectories
from monitor.types import FEATURE_NAMES
from tests.media import write_clip
from tests.test_score import run_cli

ROOT = Path(__file__).resolve().parent.parent
CLIP_NAMES = (
    "ai__latte__latte_output_b421.mp4",
    "ai__open_sora_plan__demo_0006.mp4",
    "real__mmaction2__test2.mp4",
    "real__frigate__test_motion_video-3.mp4",
)
FPR_REASON = (
    "threshold at 1% FPR (as restrav train): predict is P(AI) >= threshold, which is "
    "not argmax(predict_proba); threshold_mode='fixed' passes this check"
)


def _expected_failures(est: ReStraVClassifier) -> dict[str, str]:
    return {"check_classifiers_train": FPR_REASON} if est.threshold_mode != "fixed" else {}


@parametrize_with_checks(
    [
        ReStraVClassifier(kind="logreg", threshold_mode="fixed"),
        ReStraVClassifier(threshold_mode="fixed"),
        ReStraVClassifier(),
    ],
    expected_failed_checks=_expected_failures,
)
def test_sklearn_estimator_checks(estimator, check):  # type: ignore[no-untyped-def]
    check(estimator)


def _trajectories(n: int = 6, t: int = 24, d: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.normal(size=(n, t, d)), axis=1)


def test_features_equal_window_features_for_numpy_torch_and_lists() -> None:
    z = _trajectories()
    expected = np.stack([window_features(w).features for w in z])
    tf = TrajectoryFeatures()
    assert tf.fit(z) is tf
    tensors = [torch.from_numpy(w) for w in z]
    for x in (z, z.astype(np.float32), torch.from_numpy(z), list(z), tensors):
        out = tf.transform(x)
        assert out.dtype == np.float64 and out.shape == (6, 21)
        ref = expected if not (isinstance(x, np.ndarray) and x.dtype == np.float32) else np.stack(
            [window_features(w).features for w in z.astype(np.float32)]
        )
        np.testing.assert_array_equal(out, ref)
    assert list(tf.get_feature_names_out()) == list(FEATURE_NAMES)


def test_inputs_are_read_without_copies() -> None:
    z = _trajectories()
    assert all(np.shares_memory(v, z) for v in _as_trajectories(z))
    t = torch.from_numpy(z)
    assert all(np.shares_memory(v, z) for v in _as_trajectories(t))


@pytest.mark.cuda
def test_cuda_tensors_give_the_cpu_features() -> None:
    z = _trajectories()
    on_gpu = TrajectoryFeatures().transform(torch.from_numpy(z).cuda())
    np.testing.assert_array_equal(on_gpu, TrajectoryFeatures().transform(z))


def test_per_step_output_pads_ragged_trajectories() -> None:
    z = _trajectories(n=2, t=30)
    ragged = [z[0, :5], z[1]]
    tf = TrajectoryFeatures(steps=True, samples=30)
    out = tf.fit_transform(ragged)
    assert out.shape == (2, 29 + 28)
    d, theta, _ = trajectory_steps(z[0, :5])
    np.testing.assert_array_equal(out[0, :4], d)
    assert np.isnan(out[0, 4:29]).all()
    np.testing.assert_array_equal(out[0, 29:32], theta)
    assert not np.isnan(out[1]).any()
    names = tf.get_feature_names_out()
    assert names[0] == "d_0" and names[29] == "theta_0" and len(names) == 57
    with pytest.raises(ValueError, match="24"):
        TrajectoryFeatures().transform(ragged)
    with pytest.raises(ValueError, match="samples=30"):
        tf.transform([_trajectories(n=1, t=31)[0]])


@pytest.mark.parametrize(
    "est", [TrajectoryFeatures(steps=True, samples=10), VideoEmbedder(model="m", hop=3)]
)
def test_transformer_conventions(est) -> None:  # type: ignore[no-untyped-def]
    c = clone(est)
    assert c is not est and c.get_params() == est.get_params()
    key = next(iter(c.get_params()))
    c.set_params(**{key: est.get_params()[key]})
    assert c.fit([]) is c
    assert c.set_output(transform="default") is c
    assert len(c.get_feature_names_out()) > 0
    with pytest.raises(ValueError):
        c.set_params(nope=1)


def test_classifier_binary_labels_and_fpr_threshold() -> None:
    rng = np.random.default_rng(1)
    x = np.vstack([rng.normal(0, 1, (200, 21)), rng.normal(1.5, 1, (200, 21))])
    y = np.array(["real"] * 200 + ["synthetic"] * 200)
    clf = ReStraVClassifier(kind="logreg", target_fpr=0.05).fit(x, y)
    assert list(clf.classes_) == ["real", "synthetic"]
    p = clf.predict_proba(x)[:, 1]
    assert np.mean(p[y == "real"] >= clf.threshold_) <= 0.05
    assert (clf.predict(x) == np.where(p >= clf.threshold_, "synthetic", "real")).all()
    np.testing.assert_array_equal(clf.decision_function(x) > 0, p > clf.threshold_)


def test_grid_search_with_group_splits() -> None:
    """Group-aware cross-validation and a grid search over the pipeline find the real
    signal (the AI trajectories wiggle): every fold ranks AI above real, the refitted
    best pipeline gives P(AI) in the positive column, and labels shuffled by group
    (the same splits, no signal left) score near chance."""
    z = np.concatenate([_trajectories(n=20, seed=2), _trajectories(n=20, seed=3)])
    z[20:, :, :] += np.linspace(0, 3, 24)[None, :, None] * np.sin(np.arange(24))[None, :, None]
    y = np.array([0] * 20 + [1] * 20)
    groups = np.arange(40) // 2
    pipe = make_pipeline(TrajectoryFeatures(), StandardScaler(), ReStraVClassifier(kind="logreg"))
    cv = GroupKFold(n_splits=4)
    auc = cross_val_score(pipe, z, y, groups=groups, cv=cv, scoring="roc_auc")
    assert auc.shape == (4,) and auc.min() >= 0.9, auc
    shuffled = np.random.default_rng(0).permutation(20)[groups]  # one label per group
    chance = cross_val_score(pipe, z, shuffled % 2, groups=groups, cv=cv, scoring="roc_auc")
    assert chance.mean() < 0.75, chance
    grid = GridSearchCV(
        pipe,
        {"restravclassifier__kind": ["logreg", "gaussian_nb"],
         "restravclassifier__threshold_mode": ["fixed", "f1"]},
        cv=cv,
    ).fit(z, y, groups=groups)
    assert grid.best_score_ >= 0.95, grid.cv_results_["mean_test_score"]
    assert list(grid.classes_) == [0, 1]
    p_ai = grid.predict_proba(z)[:, 1]
    assert p_ai[y == 1].min() > p_ai[y == 0].max()
    np.testing.assert_array_equal(grid.predict(z), y)


# ---- the shared clips through the tiny random DINOv2 ----------------------------------


#: clips made here like CLIP_NAMES (frame rate, frame count): AI 8 fps 2 s, AI 10 fps,
#: real 30 fps, real 6 fps; run everywhere, the shared clips where they are present
MADE_CLIPS = (("latte.mp4", 8.0, 16, "linear"), ("sora_plan.mp4", 10.0, 30, "jitter"),
              ("test2.mp4", 30.0, 90, "linear"), ("frigate.mp4", 6.0, 30, "jitter"))


@pytest.fixture(scope="module", params=["shared", "made"])
def clips(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    if request.param == "shared":
        shared: Path = request.getfixturevalue("shared_clips")
        return [str(shared / n) for n in CLIP_NAMES]
    d = tmp_path_factory.mktemp("made-clips")
    for name, fps, n, motion in MADE_CLIPS:
        write_clip(d / name, fps=fps, n_frames=n, motion=motion)
    labels = ["ai-generated", "ai-generated", "real", "real"]  # as y = [1, 1, 0, 0]
    (d / "manifest.json").write_text(json.dumps(
        [{"file": name, "label": label} for (name, *_), label in zip(MADE_CLIPS, labels)]))
    return [str(d / name) for name, *_ in MADE_CLIPS]


@pytest.fixture(scope="module")
def clip_z(clips: list[str], tiny_model_dir: Path) -> np.ndarray:
    return VideoEmbedder(model=str(tiny_model_dir), device="cpu", batch_size=4).transform(clips)


def test_features_equal_window_features_and_the_cli(
    clips: list[str], clip_z: np.ndarray, tiny_model_dir: Path, tmp_path: Path
) -> None:
    assert clip_z.shape[:2] == (len(clips), 24) and clip_z.dtype == np.float32
    feats = TrajectoryFeatures().fit_transform(clip_z)
    for row, z in zip(feats, clip_z):
        np.testing.assert_array_equal(row, window_features(z.astype(np.float64)).features)
    y = np.array([1, 1, 0, 0])
    pipe = make_pipeline(TrajectoryFeatures(), StandardScaler(), ReStraVClassifier(kind="logreg"))
    pipe.fit(clip_z, y)
    save_pipeline(pipe, tmp_path / "art")
    assert load_classifier(tmp_path / "art").kind == "logreg"
    assert not list((tmp_path / "art").glob("*.pkl"))
    proc = run_cli("score", "-m", str(tiny_model_dir), "--device", "cpu", "--batch-size", "4",
                   "-c", str(tmp_path / "art"), *clips)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    cli_feats = np.array([list(obj["window"]["features"].values()) for obj in lines])
    np.testing.assert_allclose(feats, cli_feats, rtol=1e-12, atol=1e-12)
    p = pipe.predict_proba(clip_z)[:, 1]
    np.testing.assert_allclose([obj["window"]["score"] for obj in lines], p, rtol=1e-9, atol=1e-12)
    assert [obj["window"]["is_ai"] for obj in lines] == list(pipe.predict(clip_z) == 1)


def test_video_pipeline_cross_validates_and_windows_follow_hop(
    clips: list[str], clip_z: np.ndarray, tiny_model_dir: Path
) -> None:
    emb = VideoEmbedder(model=str(tiny_model_dir), device="cpu", batch_size=4)
    pipe = make_pipeline(emb, TrajectoryFeatures(), StandardScaler(),
                         ReStraVClassifier(kind="logreg", threshold_mode="fixed"))
    y = np.array([1, 1, 0, 0])
    scores = cross_val_score(pipe, clips, y, groups=[0, 1, 2, 3], cv=GroupKFold(n_splits=2))
    assert scores.shape == (2,)
    # an explicit start places the window there; hop gives every window of the clip
    short = clips[0]  # 2 s at 11.5 Hz: 24 samples from t=0 is the only window start
    z0 = emb.transform([(short, 0.0)])
    zh = clone(emb).set_params(hop=1).transform([short])
    assert z0.shape == (1, 24, clip_z.shape[2]) and zh.shape[1:] == (24, clip_z.shape[2])
    np.testing.assert_array_equal(zh[0], z0[0])


def test_loaded_artifact_is_a_fitted_estimator(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(60, 21))
    y = np.arange(60) % 2
    clf = ReStraVClassifier(kind="gaussian_nb", threshold_mode="f1").fit(x, y)
    clf.save(tmp_path / "a")
    back = ReStraVClassifier.load(tmp_path / "a")
    np.testing.assert_array_equal(back.predict_proba(x), clf.predict_proba(x))
    np.testing.assert_array_equal(back.predict(x), clf.predict(x))
    assert back.threshold_mode == "f1"
    with pytest.raises(ValueError, match="21"):
        ReStraVClassifier(kind="logreg").fit(x[:, :5], y).save(tmp_path / "b")


def test_readme_example_runs() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- sklearn-example -->\s*```python\n(.*?)```", text, re.S)
    assert m, "README lost its scikit-learn example"
    exec(compile(m.group(1), "README.md", "exec"), {})


def test_notebook_example_runs(clips: list[str], tiny_model_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "RESTRAV_MODEL": str(tiny_model_dir), "RESTRAV_CLIPS": str(Path(clips[0]).parent),
           "RESTRAV_OUT": str(tmp_path / "model"),
           "RESTRAV_CLIP_NAMES": ",".join(Path(c).name for c in clips)}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "notebook.py")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "accuracy per fold" in proc.stdout
    art = load_classifier(tmp_path / "model")
    assert art.backbone == str(tiny_model_dir)
    assert art.summary["sklearn_positive_label"] == "ai-generated"


def test_clear_error_without_scikit_learn() -> None:
    code = (
        "import sys; sys.modules['sklearn'] = None\n"
        "import monitor.core.pipeline, monitor.core.classifier  # the core imports without it\n"
        "import monitor.estimators\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 1
    assert "pip install 'restrav-monitor[train]'" in proc.stderr


# ---- save_pipeline writes what the pipeline computes -------------------------------------


def _labelled(n: int = 80, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Trajectories whose last half wiggles more (label 1) than the first (label 0)."""
    z = _trajectories(n=n, seed=seed)
    z[n // 2 :] += 2.0 * np.sin(np.arange(24))[None, :, None]
    return z, np.repeat([0, 1], n // 2)


@pytest.mark.parametrize(
    "scalers",
    [
        [StandardScaler()],
        [StandardScaler(with_mean=False)],
        [StandardScaler(with_std=False)],
        [StandardScaler(with_mean=False, with_std=False)],
        [StandardScaler(with_mean=False), "passthrough", StandardScaler()],
    ],
    ids=["default", "no-mean", "no-std", "neither", "chained"],
)
def test_saved_pipeline_scores_as_the_pipeline_for_every_scaler_setting(
    scalers: list[object], tmp_path: Path
) -> None:
    z, y = _labelled()  # features far from 0 (degrees): a mean wrongly subtracted shows
    pipe = make_pipeline(TrajectoryFeatures(), *scalers,
                         ReStraVClassifier(kind="logreg", threshold_mode="fixed")).fit(z, y)
    save_pipeline(pipe, tmp_path / "art")
    served = load_classifier(tmp_path / "art")  # what restrav score/serve -c load
    p = served.predict_proba(TrajectoryFeatures().transform(z))
    expected = pipe.predict_proba(z)[:, 1]
    assert expected.std() > 0.05  # the probe is not degenerate
    np.testing.assert_allclose(p, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(p >= served.threshold, pipe.predict(z) == 1)


def test_save_pipeline_refuses_what_the_cli_cannot_reproduce(tmp_path: Path) -> None:
    from sklearn.preprocessing import MinMaxScaler

    z, y = _labelled()
    f = TrajectoryFeatures().transform(z)
    clf = ReStraVClassifier(kind="logreg").fit(f, y)
    for step, match in (
        (MinMaxScaler().fit(f), "MinMaxScaler"),
        (TrajectoryFeatures(zero_step_eps=1e-3), "zero_step_eps"),
        (TrajectoryFeatures(steps=True), "steps=True"),
    ):
        with pytest.raises(ValueError, match=match):
            save_pipeline(make_pipeline(step, clf), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_saved_pipeline_records_the_embedder_options(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    z, y = _labelled()
    f = TrajectoryFeatures().transform(z)
    pipe = make_pipeline(
        VideoEmbedder(model="some/dinov2", image_size=112, normalize="imagenet", dtype="bfloat16"),
        TrajectoryFeatures(), StandardScaler().fit(f),
        ReStraVClassifier(kind="logreg").fit(StandardScaler().fit_transform(f), y),
    )
    save_pipeline(pipe, tmp_path / "art")
    art = load_classifier(tmp_path / "art")
    assert art.backbone == "some/dinov2"
    assert art.summary["backbone_options"] == {
        "image_size": 112, "normalize": "imagenet", "dtype": "bfloat16"}
    # what restrav score/serve would compare with their model settings
    assert art.backbone_mismatches(
        {"image_size": 112, "normalize": "imagenet", "dtype": "bfloat16", "other": 1}) == []
    assert art.backbone_mismatches({"image_size": 224, "normalize": "none"}) == [
        "image_size: trained with 112, now 224", "normalize: trained with 'imagenet', now 'none'"]
    # restrav score/serve load it either way, and say so when their settings differ
    from monitor.config import load_settings
    from workers.common import build_classifier

    def loaded(**model: object) -> list[str]:
        settings = load_settings(None, classifier={"path": str(tmp_path / "art")}, model={
            "ref": "some/dinov2", "normalize": "imagenet", "dtype": "bfloat16", **model})
        with caplog.at_level(logging.WARNING, logger="restrav"):
            caplog.clear()
            assert build_classifier(settings) is not None
        return [r.getMessage() for r in caplog.records]

    assert loaded(image_size=112) == []
    (msg,) = loaded(image_size=224)
    assert "image_size: trained with 112, now 224" in msg and "same model settings" in msg


@pytest.mark.parametrize(
    ("ai", "real"), [("ai-generated", "real"), ("synthetic", "camera")],
    ids=["ai-sorts-first", "ai-sorts-last"],
)
def test_string_labels_name_the_ai_class_and_the_artifact_scores_it(
    ai: str, real: str, tmp_path: Path
) -> None:
    z, y01 = _labelled()
    y = np.where(y01 == 1, ai, real)
    make = lambda **kw: make_pipeline(  # noqa: E731
        TrajectoryFeatures(), StandardScaler(), ReStraVClassifier(kind="logreg", **kw))
    # without positive_label nothing says which string is AI: in memory sklearn's
    # convention holds, but no artifact is written that would have to guess
    unsure = make().fit(z, y)
    with pytest.raises(ValueError, match="positive_label"):
        save_pipeline(unsure, tmp_path / "unsure")
    with pytest.raises(ValueError, match="positive_label"):
        unsure[-1].save(tmp_path / "unsure")
    with pytest.raises(ValueError, match="not one of the labels"):
        make(positive_label="ai").fit(z, y)

    pipe = make(positive_label=ai, target_fpr=0.05).fit(z, y)
    clf = pipe[-1]
    assert list(clf.classes_) == sorted([ai, real]) and clf.positive_label_ == ai
    p_ai = pipe.predict_proba(z)[:, list(clf.classes_).index(ai)]
    assert p_ai[y == ai].mean() > 0.8 > 0.2 > p_ai[y == real].mean()
    assert np.mean(p_ai[y == real] >= clf.threshold_) <= 0.05  # FPR on the real rows
    pred = pipe.predict(z)
    np.testing.assert_array_equal(pred == ai, p_ai >= clf.threshold_)
    np.testing.assert_array_equal(pipe.decision_function(z) > 0, pred == clf.classes_[1])

    save_pipeline(pipe, tmp_path / "art")
    meta = json.loads((tmp_path / "art" / "classifier.json").read_text(encoding="utf-8"))
    assert meta["positive_class"] == "ai-generated"
    served = load_classifier(tmp_path / "art")
    p = served.predict_proba(TrajectoryFeatures().transform(z))
    np.testing.assert_allclose(p, p_ai, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(p >= served.threshold, pred == ai)

    clf.save(tmp_path / "clf")
    back = ReStraVClassifier.load(tmp_path / "clf")
    x = pipe[:-1].transform(z)
    assert back.positive_label == ai and back.positive_label_ == ai
    np.testing.assert_array_equal(back.predict(x), clf.predict(x))
    np.testing.assert_array_equal(back.predict_proba(x), clf.predict_proba(x))


def test_video_embedder_is_left_out_of_pandas_output(tmp_path: Path, tiny_model_dir: Path
                                                     ) -> None:
    """sklearn.set_config(transform_output="pandas"), common in notebooks, leaves the
    3-D embeddings alone: scikit-learn does not try to wrap them (with pandas that
    raised "Must pass 2-d input"; without pandas, as here, an ImportError)."""
    import sklearn

    from tests.media import write_clip

    clip = tmp_path / "clip.mp4"
    write_clip(clip, fps=25, n_frames=75, size=(64, 48))
    with sklearn.config_context(transform_output="pandas"):
        z = VideoEmbedder(model=str(tiny_model_dir), device="cpu", image_size=56
                          ).fit_transform([str(clip)])
    assert isinstance(z, np.ndarray) and z.shape[:2] == (1, 24)


def test_a_single_path_is_refused_not_read_per_character() -> None:
    with pytest.raises(TypeError, match=r"expected a list of paths.*'/x/clip\.mp4'"):
        VideoEmbedder().transform("/x/clip.mp4")
    with pytest.raises(TypeError, match="expected a list of paths"):
        VideoEmbedder().fit(Path("/x/clip.mp4"))


@pytest.mark.parametrize("est", [
    ReStraVClassifier(target_fpr=2), ReStraVClassifier(target_fpr=-0.5),
    ReStraVClassifier(epochs=0), ReStraVClassifier(batch_size=0),
    ReStraVClassifier(kind="random_forest", hyper={"n_tree": 10}),
    ReStraVClassifier(kind="logreg", hyper={"max_depth": 3}),
    ReStraVClassifier(kind="nope"), ReStraVClassifier(lr=0.0),
    TrajectoryFeatures(steps="yes"), TrajectoryFeatures(samples=2),  # type: ignore[arg-type]
    TrajectoryFeatures(zero_step_eps=-1.0),
], ids=repr)
def test_parameters_are_validated_at_fit(est: object) -> None:
    """Each refused with a ValueError naming the parameter (target_fpr=2 was an
    IndexError, batch_size=0 a range() error, the others passed silently)."""
    x = _trajectories(n=20) if isinstance(est, TrajectoryFeatures) else \
        np.random.default_rng(0).normal(size=(20, 21))
    y = np.arange(20) % 2
    with pytest.raises(ValueError, match=r"target_fpr|epochs|batch_size|hyper|kind|lr|steps|"
                                         r"samples|zero_step_eps"):
        est.fit(x, y)  # type: ignore[attr-defined]


def test_bfloat16_tensors_are_read() -> None:
    z = torch.tensor(_trajectories(), dtype=torch.bfloat16)
    got = TrajectoryFeatures().fit_transform(z)
    want = np.stack([window_features(t).features for t in z.float().numpy()])
    np.testing.assert_array_equal(got, want)
    assert TrajectoryFeatures().fit_transform(list(z)).shape == got.shape


def test_a_loaded_model_keeps_its_fit_settings(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(60, 21))
    y = np.arange(60) % 2
    clf = ReStraVClassifier(kind="random_forest", target_fpr=0.05, epochs=3, lr=0.01,
                            batch_size=16, seed=7, hyper={"n_trees": 5}).fit(x, y)
    clf.save(tmp_path / "a")
    back = ReStraVClassifier.load(tmp_path / "a")
    keep = ("target_fpr", "epochs", "lr", "batch_size", "seed", "hyper")
    assert {k: back.get_params()[k] for k in keep} == {k: clf.get_params()[k] for k in keep}
    again = clone(back).fit(x, y)  # refits at the saved settings: the same model
    np.testing.assert_array_equal(again.predict_proba(x), clf.predict_proba(x))


def test_repeated_frames_are_counted_as_the_cli_flags_them() -> None:
    """SPEC section 1: a window with repeated frames is flagged; ``repeated_`` gives each
    trajectory's count (the CLI's ``repeated_frames``)."""
    z = _trajectories(n=3)
    z[1, 5] = z[1, 4]  # one frame shown twice
    z[2, 10:13] = z[2, 9]  # three more times
    tf = TrajectoryFeatures()
    tf.fit_transform(z)
    assert tf.repeated_.tolist() == [window_features(t).repeated_frames for t in z] == [0, 1, 3]
    tf.set_params(steps=True).transform(z)
    assert tf.repeated_.tolist() == [0, 1, 3]


def test_nan_or_inf_trajectories_are_named() -> None:
    z = _trajectories(n=4)
    z[2, 7, 3] = np.nan
    with pytest.raises(ValueError, match="trajectory 2 holds NaN or inf"):
        TrajectoryFeatures().fit_transform(z)
    z[2, 7, 3] = 0.0
    z[3, 0, 0] = np.inf
    with pytest.raises(ValueError, match="trajectory 3 holds NaN or inf"):
        TrajectoryFeatures(steps=True).fit_transform(list(z))
