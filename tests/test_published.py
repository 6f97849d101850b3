"""The published ReStraV classifier: import, bundling, and equality with the upstream recipe.

The upstream recipe is written here independently of the project's code: the MLP as
a torch module loaded from the upstream ``model.pt`` (float64), features computed the
upstream way (cosine similarity, so 90 degrees next to a zero-length step; population
variance), the z-score with their mean/std, and P(AI) = 1 - sigmoid. The upstream files
are in ``tests/data/upstream-restrav-vidprom-mlp`` (unchanged, with their licence).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from monitor.core.classifier import load_classifier
from monitor.core.embed import Embedder
from monitor.core.geometry import WindowRing, trajectory_steps, window_features
from monitor.core.pipeline import score_file
from monitor.core.published import (
    DEFAULT_CLASSIFIER,
    bundled_classifier_dir,
    import_upstream,
    resolve_classifier_ref,
)
from monitor.types import WINDOW_SAMPLES
from workers.cli import main as cli_main

from .media import write_clip

ROOT = Path(__file__).resolve().parents[1]
UPSTREAM = Path(__file__).parent / "data" / "upstream-restrav-vidprom-mlp"


class UpstreamMLP(torch.nn.Module):
    """The upstream network's shape (keys net.0/2/4), to load its state_dict as is."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(21, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32), torch.nn.ReLU(),
            torch.nn.Linear(32, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


class Upstream:
    """The upstream recipe in float64: features from embeddings, P(real), the tau rule."""

    def __init__(self, directory: Path = UPSTREAM) -> None:
        self.mlp = UpstreamMLP()
        self.mlp.load_state_dict(
            torch.load(directory / "model.pt", map_location="cpu", weights_only=True)
        )
        self.mlp = self.mlp.double().eval()
        self.mean = np.load(directory / "mean.npy", allow_pickle=False).astype(np.float64)
        self.std = np.load(directory / "std.npy", allow_pickle=False).astype(np.float64)
        self.tau = float(np.load(directory / "best_tau.npy", allow_pickle=False))

    @staticmethod
    def features(z: Any) -> np.ndarray:
        """The 21 features of one ``(24, D)`` trajectory, computed the upstream way."""
        zt = torch.as_tensor(np.asarray(z), dtype=torch.float64)[None]
        delta = zt[:, 1:] - zt[:, :-1]
        d = delta.norm(dim=-1)
        cos = F.cosine_similarity(delta[:, :-1], delta[:, 1:], dim=-1)
        theta = torch.rad2deg(torch.acos(cos.clamp(-1, 1)))

        def stats(x: torch.Tensor) -> list[torch.Tensor]:
            return [x.mean(-1), x.amin(-1), x.amax(-1), x.var(-1, unbiased=False)]

        row = torch.cat([d[:, :7], theta[:, :6], torch.stack(stats(d) + stats(theta), 1)], 1)
        return row[0].numpy()

    def p_real(self, features: np.ndarray) -> np.ndarray:
        x = (np.atleast_2d(features) - self.mean) / self.std
        with torch.no_grad():
            return torch.sigmoid(self.mlp(torch.from_numpy(x))).numpy().reshape(-1)

    def p_ai(self, z: Any) -> tuple[float, bool]:
        """P(AI) and the upstream decision (AI when P(real) < tau) for one trajectory."""
        p = float(self.p_real(self.features(z))[0])
        return 1.0 - p, p < self.tau


@pytest.fixture(scope="module")
def upstream() -> Upstream:
    return Upstream()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=120, check=False,
    )


# --- the artifact ---------------------------------------------------------------------


def test_bundled_classifier_is_the_conversion_of_the_published_files() -> None:
    bundled = load_classifier(bundled_classifier_dir())
    fresh = import_upstream(UPSTREAM)
    assert bundled.kind == fresh.kind == "mlp"
    assert bundled.threshold == fresh.threshold
    assert bundled.zero_step_angle_deg == fresh.zero_step_angle_deg == 90.0
    assert sorted(bundled.params) == sorted(fresh.params)
    for k, v in fresh.params.items():
        np.testing.assert_array_equal(bundled.params[k], v, err_msg=k)
    np.testing.assert_array_equal(bundled.scaler.mean, fresh.scaler.mean)
    np.testing.assert_array_equal(bundled.scaler.std, fresh.scaler.std)
    sums = dict(
        reversed(line.split()) for line in (UPSTREAM / "SHA256SUMS").read_text().splitlines()
    )
    assert bundled.provenance["sha256"] == sums
    assert bundled.provenance["license"] == "Apache-2.0"
    assert "sampagon/ReStraV" in bundled.provenance["source"]
    # the licence and a NOTICE travel with the converted files
    d = bundled_classifier_dir()
    assert (d / "LICENSE").read_bytes() == (UPSTREAM / "LICENSE").read_bytes()
    assert "sampagon/ReStraV" in (d / "NOTICE").read_text()


def test_classifier_references() -> None:
    assert resolve_classifier_ref(None) == bundled_classifier_dir()
    assert resolve_classifier_ref("default") == bundled_classifier_dir()
    assert bundled_classifier_dir().name == DEFAULT_CLASSIFIER
    assert resolve_classifier_ref("none") is None
    assert resolve_classifier_ref("/x/y") == Path("/x/y")


def test_p_ai_and_decisions_equal_the_upstream_rule(upstream: Upstream) -> None:
    clf = load_classifier(bundled_classifier_dir())
    rng = np.random.default_rng(0)
    x = upstream.mean + upstream.std * rng.normal(size=(20000, 21)) * 1.5
    p_real = upstream.p_real(x)
    p_ai = clf.predict_proba(x)
    np.testing.assert_allclose(p_ai, 1.0 - p_real, rtol=0, atol=1e-12)
    # the same decisions: AI exactly when upstream says not real
    assert ((p_ai >= clf.threshold) == (p_real < upstream.tau)).all()
    assert 0.05 < np.mean(p_real < upstream.tau) < 0.95  # both decisions occur
    near = np.abs(p_real - upstream.tau) < 0.01
    assert near.sum() > 10  # rows close to the threshold were compared too


def test_threshold_boundary_is_exact(upstream: Upstream) -> None:
    clf = load_classifier(bundled_classifier_dir())
    tau = upstream.tau
    below = np.nextafter(tau, 0.0)  # P(real) just under tau: upstream says AI
    assert 1.0 - below >= clf.threshold
    assert not (1.0 - tau >= clf.threshold)  # P(real) == tau: upstream says real


# --- features in the classifier's convention --------------------------------------------


def repeated_trajectory(seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = np.cumsum(rng.normal(size=(WINDOW_SAMPLES, 40)), axis=0)
    for i in (3, 4, 10, 17, 23):  # repeated frames, two in a row at 3-4, one at the end
        z[i] = z[i - 1]
    return z


@pytest.mark.parametrize("angle", [0.0, 90.0])
def test_zero_steps_get_the_conventions_angle(angle: float) -> None:
    z = repeated_trajectory()
    d, theta, zeros = trajectory_steps(z, zero_step_angle_deg=angle)
    zero_steps = np.flatnonzero(d == 0.0)
    assert zeros == 5 and zero_steps.tolist() == [2, 3, 9, 16, 22]
    touched = {j for i in zero_steps for j in (i - 1, i) if 0 <= j < WINDOW_SAMPLES - 2}
    assert all(theta[j] == angle for j in touched)
    others = [j for j in range(WINDOW_SAMPLES - 2) if j not in touched]
    assert others and not any(theta[j] in (0.0, 90.0) for j in others)
    wf = window_features(z, zero_step_angle_deg=angle)
    assert wf.zero_step_angle_deg == angle
    if angle == 90.0:  # the upstream computation, independently written above
        np.testing.assert_allclose(wf.features, Upstream.features(z), rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("angle", [0.0, 90.0])
def test_incremental_ring_equals_batch_in_both_conventions(angle: float) -> None:
    z = np.concatenate([repeated_trajectory(2), repeated_trajectory(3)[:10]])
    ring = WindowRing(40, zero_step_angle_deg=angle)
    for i in range(len(z)):
        ring.update(torch.from_numpy(z[i]).float())
        if i + 1 >= WINDOW_SAMPLES:
            got = ring.features()
            assert got is not None and got.zero_step_angle_deg == angle
            ref = window_features(
                z[i + 1 - WINDOW_SAMPLES : i + 1].astype(np.float32), zero_step_angle_deg=angle
            )
            np.testing.assert_allclose(got.features, ref.features, rtol=1e-6, atol=1e-6)
            assert got.repeated_frames == ref.repeated_frames


def test_other_angles_are_refused() -> None:
    with pytest.raises(ValueError, match=r"0 \(SPEC\) or 90"):
        trajectory_steps(repeated_trajectory(), zero_step_angle_deg=45.0)
    with pytest.raises(ValueError, match=r"0 \(SPEC\) or 90"):
        WindowRing(4, zero_step_angle_deg=180.0)


# --- every path scores as the upstream recipe -------------------------------------------


@pytest.mark.slow
def test_cli_default_classifier_equals_upstream_on_every_shared_clip(
    shared_clips: Path, tiny_model_dir: Path, tiny_embedder: Embedder,
    upstream: Upstream, capsys: pytest.CaptureFixture[str],
) -> None:
    manifest = json.loads((shared_clips / "manifest.json").read_text())
    paths = [str(shared_clips / e["file"]) for e in manifest]
    assert cli_main(["score", "--model", str(tiny_model_dir), *paths]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["path"] for x in lines] == paths
    flagged = 0
    for path, out in zip(paths, lines):
        w = out["window"]
        assert w["zero_step_angle_deg"] == 90.0, path
        z = score_file(Path(path), tiny_embedder, keep_embeddings=True).centre_embeddings
        assert z is not None
        p_ai, is_ai = upstream.p_ai(z.double().numpy())
        assert w["score"] == pytest.approx(p_ai, abs=1e-6), path
        assert w["is_ai"] == is_ai, path
        if w["zero_steps"]:
            flagged += 1
            assert 90.0 in w["features"].values() or w["features"]["theta_max"] == 90.0
    assert flagged >= 4  # the 6 and 8 fps clips repeat frames: the 90 degree case is covered


def test_cli_features_only_and_spec_convention(tmp_path: Path, tiny_model_dir: Path) -> None:
    clip = tmp_path / "slow.mp4"
    write_clip(clip, fps=8, n_frames=40)
    default = run_cli("score", "-m", str(tiny_model_dir), str(clip))
    none = run_cli("score", "-m", str(tiny_model_dir), "--classifier", "none", str(clip))
    assert default.returncode == 0 and none.returncode == 0, default.stderr + none.stderr
    a, b = json.loads(default.stdout)["window"], json.loads(none.stdout)["window"]
    assert isinstance(a["score"], float) and a["zero_step_angle_deg"] == 90.0
    assert b["score"] is None and b["threshold"] is None and b["zero_step_angle_deg"] == 0.0
    assert a["zero_steps"] == b["zero_steps"] > 0
    # only the angles next to zero steps differ between the conventions
    assert a["features"]["d_mean"] == b["features"]["d_mean"]
    assert a["features"]["theta_mean"] > b["features"]["theta_mean"]
    # the tiny model is not the one the classifier was trained on: the run says so
    assert "embedding_dim: trained with 98688" in default.stderr


def test_queue_worker_scores_with_the_default_classifier_as_upstream(
    client: Any, tmp_path: Path, tiny_model_dir: Path, upstream: Upstream
) -> None:
    from monitor.config import load_settings
    from monitor.queue import ClipScorer
    from workers.common import build_classifier, build_embedder, decode_limits

    from .queue_helpers import running_worker
    from .test_queue import results_of, submit

    clip = tmp_path / "slow.mp4"
    write_clip(clip, fps=8, n_frames=40)
    settings = load_settings(None, model={"ref": str(tiny_model_dir), "device": "cpu"})
    embedder = build_embedder(settings)
    scorer = ClipScorer(embedder, build_classifier(settings), decode_limits(settings))
    submit(client, str(clip), "pub-1", hop=1)
    submit(client, str(clip), "pub-none", hop=1, classifier="none")
    with running_worker(client, scorer):
        res = results_of(client, ["pub-1", "pub-none"])
    ref = score_file(clip, embedder, all_windows=True, hop=1, keep_embeddings=True)
    assert ref.window_embeddings is not None and ref.centre_embeddings is not None
    got = res["pub-1"]["clip"]
    p_ai, is_ai = upstream.p_ai(ref.centre_embeddings.double().numpy())
    assert got["window"]["score"] == pytest.approx(p_ai, abs=1e-6)
    assert got["window"]["is_ai"] == is_ai
    assert len(got["windows"]) == len(ref.window_embeddings) > 1
    for w, z in zip(got["windows"], ref.window_embeddings):
        assert w["zero_step_angle_deg"] == 90.0
        assert w["score"] == pytest.approx(upstream.p_ai(z.double().numpy())[0], abs=1e-6)
    none = res["pub-none"]["clip"]
    assert none["window"]["score"] is None and none["window"]["zero_step_angle_deg"] == 0.0
    assert res["pub-none"]["aggregate"]["score_mean"] is None


@pytest.mark.slow
def test_serve_file_stream_scores_with_the_default_classifier_as_upstream(
    tmp_path: Path, tiny_model_dir: Path, upstream: Upstream
) -> None:
    import signal
    import time

    import yaml

    from monitor.core.backbone import load_backbone

    from .redisproc import free_port

    clip = tmp_path / "slow.mp4"
    write_clip(clip, fps=8, n_frames=48)  # 6 s at 8 fps: repeated samples in every window
    cfg = {
        "model": {"ref": str(tiny_model_dir), "device": "cpu", "threads": 1},
        "serve": {
            "api": {"port": free_port()},
            "streams": [{"id": "pub", "url": f"file://{clip}"}],
        },
    }
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(cfg))
    out_path = tmp_path / "out.jsonl"
    with out_path.open("w") as out, (tmp_path / "err.log").open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "serve", "--config",
             str(tmp_path / "serve.yaml")],
            cwd=ROOT, stdout=out, stderr=err,
        )
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and len(out_path.read_text().splitlines()) < 10:
                time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, (tmp_path / "err.log").read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    scores = [json.loads(x) for x in out_path.read_text().splitlines()]
    scores = [s for s in scores if s.get("type") == "score" and s["stream"] == "pub"]
    assert len(scores) >= 10, (tmp_path / "err.log").read_text()
    embedder = Embedder(load_backbone(str(tiny_model_dir), "cpu"), batch_size=8)
    ref = score_file(clip, embedder, all_windows=True, hop=1, keep_embeddings=True)
    assert ref.windows is not None and ref.window_embeddings is not None
    by_start = {round(w.window.start_s, 4): z for w, z in zip(ref.windows, ref.window_embeddings)}
    matched = 0
    for s in scores:
        assert s["zero_step_angle_deg"] == 90.0 and s["zero_steps"] > 0
        z = by_start.get(round(s["start_s"], 4))
        if z is None:
            continue
        matched += 1
        p_ai, is_ai = upstream.p_ai(z.double().numpy())
        assert s["p_ai"] == pytest.approx(p_ai, abs=1e-6)
        assert s["is_ai"] == is_ai
    assert matched >= 10


# --- import-classifier ------------------------------------------------------------------


def test_import_cli_writes_the_bundled_artifact(tmp_path: Path) -> None:
    out = tmp_path / "clf"
    r = run_cli("import-classifier", str(UPSTREAM), "--out", str(out), "--source", "test copy")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["zero_step_angle_deg"] == 90.0 and info["provenance"]["source"] == "test copy"
    a, b = load_classifier(out), load_classifier(bundled_classifier_dir())
    assert a.threshold == b.threshold and a.zero_step_angle_deg == b.zero_step_angle_deg
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    assert {p.name for p in out.iterdir()} == {
        "classifier.json", "classifier.safetensors", "LICENSE", "NOTICE"
    }
    # a second import into the same folder needs --force
    again = run_cli("import-classifier", str(UPSTREAM), "--out", str(out))
    assert again.returncode == 2 and "--force" in again.stderr


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("code ran",))


def _broken(case: str, d: Path) -> None:
    """Damage a copy of the upstream directory in one way."""
    state = torch.load(d / "model.pt", map_location="cpu", weights_only=True)
    if case == "missing file":
        (d / "std.npy").unlink()
    elif case == "wrong layer size":
        state["net.0.weight"] = torch.zeros(64, 20)
        torch.save(state, d / "model.pt")
    elif case == "missing key":
        del state["net.4.bias"]
        torch.save(state, d / "model.pt")
    elif case == "nan weights":
        state["net.2.weight"][3, 4] = float("nan")
        torch.save(state, d / "model.pt")
    elif case == "pickle needing code":
        torch.save({"x": _Evil()}, d / "model.pt")
    elif case == "not a torch file":
        (d / "model.pt").write_bytes(b"hello, not a model")
    elif case == "object array":
        np.save(d / "mean.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif case == "wrong mean shape":
        np.save(d / "mean.npy", np.zeros((1, 20), dtype=np.float32))
    elif case == "threshold out of range":
        np.save(d / "best_tau.npy", np.float64(1.5))
    if case not in ("missing file",):
        (d / "SHA256SUMS").unlink()  # damage on purpose: the checksums are tested below
    if case == "checksum mismatch":
        (d / "SHA256SUMS").write_text((UPSTREAM / "SHA256SUMS").read_text())
        np.save(d / "best_tau.npy", np.float64(0.5))


BROKEN = {
    "missing file": "missing std.npy",
    "wrong layer size": "net.0.weight has shape (64, 20), expected (64, 21)",
    "missing key": "missing keys ['net.4.bias']",
    "nan weights": "net.2.weight holds NaN",
    "pickle needing code": "a pickle that needs code to load, which is refused",
    "not a torch file": "not a readable PyTorch file",
    "object array": "object array that needs pickle",
    "wrong mean shape": "shape (1, 20), expected (1, 21)",
    "threshold out of range": "threshold 1.5 is not in (0, 1)",
    "checksum mismatch": "does not match SHA256SUMS",
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_import_refuses_broken_inputs_in_one_line_and_writes_nothing(
    case: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    shutil.copytree(UPSTREAM, src)
    _broken(case, src)
    out = tmp_path / "out"
    r = run_cli("import-classifier", str(src), "--out", str(out))
    assert r.returncode == 3, (case, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and BROKEN[case] in lines[0], (case, r.stderr)
    assert "weights_only=False" not in r.stderr and "code ran" not in r.stdout + r.stderr
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src"]  # no temporary left behind


def test_import_usage_errors(tmp_path: Path) -> None:
    r = run_cli("import-classifier", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "no such directory" in r.stderr
    assert not (tmp_path / "o").exists()
    r = run_cli("import-classifier", "--help")
    assert r.returncode == 0 and "P(real)" in r.stdout and "SHA256SUMS" in r.stdout


# --- learning in either convention ------------------------------------------------------


@pytest.fixture(scope="module")
def slow_clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A labelled folder of 8 fps clips (every window repeats frames)."""
    from .test_train_e2e import _jumpy, _real

    root = tmp_path_factory.mktemp("slow-labelled")
    for sub in ("real", "ai/jump", "ai/walk"):
        (root / sub).mkdir(parents=True)
    for k in range(6):
        write_clip(root / "real" / f"r{k}.mp4", fps=8, n_frames=24, frame_fn=_real(k))
    for k in range(3):
        write_clip(root / "ai/jump" / f"j{k}.mp4", fps=8, n_frames=24, frame_fn=_jumpy(k, 1))
        write_clip(root / "ai/walk" / f"w{k}.mp4", fps=8, n_frames=24, frame_fn=_jumpy(k, 2))
    return root


@pytest.mark.slow
def test_extract_train_eval_round_trip_in_the_upstream_convention(
    slow_clips: Path, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from monitor.core.backbone import load_backbone
    from monitor.learn.dataset import load_table

    config = tmp_path / "settings.yaml"
    config.write_text("model:\n  image_size: 112\n")
    model = ["--config", str(config), "--model", str(tiny_model_dir), "--device", "cpu"]
    t90, t0, art = tmp_path / "t90", tmp_path / "t0", tmp_path / "art"
    assert cli_main(["extract", str(slow_clips), "--out", str(t90), "--zero-step-angle", "90",
                     "--no-progress", *model]) == 0
    assert cli_main(["extract", str(slow_clips), "--out", str(t0), "--no-progress", *model]) == 0
    capsys.readouterr()
    table = load_table(t90)
    assert table.meta["zero_step_angle_deg"] == 90.0
    assert load_table(t0).meta["zero_step_angle_deg"] == 0.0
    assert (table.features[:, 7:13] == 90.0).any()  # angles next to repeated frames
    assert not (load_table(t0).features[:, 7:13] == 90.0).any()
    assert cli_main(["train", str(t90), "--out", str(art), "--kind", "logreg",
                     "--test-fraction", "0.34", "--bootstrap", "50"]) == 0
    clf = load_classifier(art)
    assert clf.zero_step_angle_deg == 90.0
    # scoring the trained artifact computes the features it was trained on
    embedder = Embedder(load_backbone(str(tiny_model_dir), "cpu", image_size=112))
    rows = table.windows("centre")
    for path, row in list(zip(rows.col("path"), rows.features))[:4]:
        res = score_file(Path(str(path)), embedder, clf)
        assert res.centre.window.zero_step_angle_deg == 90.0
        np.testing.assert_allclose(res.centre.window.features, row, rtol=1e-9, atol=1e-9)
        assert res.centre.p_ai == pytest.approx(float(clf.predict_proba(row)[0]), abs=1e-9)
    # a table in the other convention is refused with what to do
    capsys.readouterr()
    assert cli_main(["eval", str(t0), "-c", str(art), "--out", str(tmp_path / "r0"),
                     "--floor-repeats", "0", "--bootstrap", "20"]) == 3
    assert "--zero-step-angle 90" in capsys.readouterr().err
    # the bundled classifier is evaluated by default, and recalibrated for a target FPR
    recal = tmp_path / "recal"
    assert cli_main(["eval", str(t90), "--out", str(tmp_path / "r90"), "--floor-repeats", "0",
                     "--bootstrap", "20", "--recalibrate", str(recal),
                     "--target-fpr", "0.2"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["recalibrated"]["real_clips"] == 6
    new = load_classifier(recal)
    assert new.threshold == out["recalibrated"]["threshold"]
    assert new.zero_step_angle_deg == 90.0 and new.provenance["license"] == "Apache-2.0"
    assert (recal / "LICENSE").is_file() and (recal / "NOTICE").is_file()
    real = rows.features[rows.labels == 0]
    p_real_rows = new.predict_proba(real)
    # 20 % of 6 real clips allows 1 false positive: exactly the highest real clip is flagged
    assert np.sum(p_real_rows >= new.threshold) == 1
    assert new.threshold == np.nextafter(np.sort(p_real_rows)[-2], np.inf)


def _pipeline_clips(root: Path) -> tuple[list[str], np.ndarray]:
    from .test_train_e2e import _jumpy, _real

    paths = []
    for k in range(4):
        p = root / f"r{k}.mp4"
        write_clip(p, fps=8 if k % 2 else 24, n_frames=48 if k % 2 else 72, frame_fn=_real(k))
        paths.append(str(p))
        p = root / f"a{k}.mp4"
        write_clip(p, fps=8 if k % 2 else 24, n_frames=48 if k % 2 else 72,
                   frame_fn=_jumpy(k, 1))
        paths.append(str(p))
    return paths, np.array([0, 1] * 4)


@pytest.mark.slow
@pytest.mark.parametrize("angle", [0.0, 90.0])
def test_saved_pipeline_and_cli_agree_in_both_conventions(
    angle: float, tmp_path: Path, tiny_model_dir: Path
) -> None:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from monitor.estimators import (
        ReStraVClassifier,
        TrajectoryFeatures,
        VideoEmbedder,
        save_pipeline,
    )

    paths, y = _pipeline_clips(tmp_path)
    z = VideoEmbedder(model=str(tiny_model_dir), device="cpu").transform(paths)
    pipe = make_pipeline(TrajectoryFeatures(zero_step_angle_deg=angle), StandardScaler(),
                         ReStraVClassifier(kind="logreg", threshold_mode="fixed")).fit(z, y)
    save_pipeline(pipe, tmp_path / "art")
    assert load_classifier(tmp_path / "art").zero_step_angle_deg == angle
    r = run_cli("score", "-m", str(tiny_model_dir), "--device", "cpu",
                "-c", str(tmp_path / "art"), *paths)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x)["window"] for x in r.stdout.splitlines()]
    feats = TrajectoryFeatures(zero_step_angle_deg=angle).transform(z)
    assert (feats[:, 7:13] == angle).any()  # the 8 fps clips' zero steps show the convention
    np.testing.assert_allclose(
        [list(w["features"].values()) for w in lines], feats, rtol=1e-9, atol=1e-9)
    assert all(w["zero_step_angle_deg"] == angle for w in lines)
    np.testing.assert_allclose([w["score"] for w in lines], pipe.predict_proba(z)[:, 1],
                               rtol=1e-7, atol=1e-9)


def test_published_pipeline_scores_as_the_cli_and_refuses_a_mixed_convention(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from sklearn.pipeline import make_pipeline

    from monitor.estimators import (
        ReStraVClassifier,
        TrajectoryFeatures,
        published_pipeline,
        save_pipeline,
    )

    clip = tmp_path / "slow.mp4"
    write_clip(clip, fps=8, n_frames=40)
    pipe = published_pipeline(model=str(tiny_model_dir), device="cpu")
    p = pipe.predict_proba([str(clip)])[:, 1]
    r = run_cli("score", "-m", str(tiny_model_dir), "--device", "cpu", str(clip))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["window"]["score"] == pytest.approx(float(p[0]), abs=1e-6)
    loaded = ReStraVClassifier.load()  # the bundled classifier
    assert loaded.zero_step_angle_deg_ == 90.0
    with pytest.raises(ValueError, match="zero_step_angle_deg=90"):
        save_pipeline(make_pipeline(TrajectoryFeatures(), loaded), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_a_run_on_another_backbone_is_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from monitor.config import load_settings
    from workers.common import build_classifier

    clf = load_classifier(bundled_classifier_dir())  # recorded: dinov2_vits14
    clf.save(tmp_path / "art")

    def warnings_for(ref: str) -> list[str]:
        settings = load_settings(None, classifier={"path": str(tmp_path / "art")},
                                 model={"ref": ref})
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="restrav"):
            assert build_classifier(settings, 257 * 384) is not None
        return [r.getMessage() for r in caplog.records]

    # the same weights under their Hugging Face id and torch.hub name: no warning
    assert warnings_for("facebook/dinov2-small") == []
    assert warnings_for("dinov2_vits14") == []
    (msg,) = warnings_for("facebook/dinov2-base")
    assert "backbone: trained with 'dinov2_vits14', now 'facebook/dinov2-base'" in msg
