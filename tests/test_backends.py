"""CPU backends (monitor/core/backends.py, graphs.py): features equal eager torch float32
within each mode's
bound on the shared clips, the graph cache rebuilds stale or corrupted entries and never
loads them, ``auto`` never picks a mode over the bound, and torch works without the extra.

The tiny random DINOv2 stands in for ViT-S/14 (the real-size figures are bench/'s); speed
is never asserted here.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from monitor.core import backends, graphs
from monitor.core.backbone import load_backbone
from monitor.core.backends import (
    DRIFT_BOUND,
    MEASURED_DRIFT,
    MissingRuntime,
    choose_backend,
    feature_drift,
    make_embedder,
    within_bounds,
)
from monitor.core.geometry import window_features
from monitor.core.graphs import build_runner
from monitor.errors import ConfigError
from monitor.media.decode_file import probe, sample_file
from monitor.media.sampler import centre_window_start, window_times

CPU = torch.device("cpu")


def _needs(runtime: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        importlib.util.find_spec(runtime) is None,
        reason=f"{runtime} not installed (pip install 'restrav-monitor[cpu-fast]')",
    )


MODE_BOUND = {"float32": 1e-4, "bfloat16": 0.1, "int8": 5.0}
"""Feature drift each mode must stay within on the tiny model: float32 is exact to
rounding; the reduced modes' bounds are loose (their real-size drift is measured in
bench/bench_backends.py and recorded in MEASURED_DRIFT), they guard against a broken graph."""

RUNTIME_MODES = [
    pytest.param("onnxruntime", "float32", marks=_needs("onnxruntime")),
    pytest.param("openvino", "float32", marks=_needs("openvino")),
    pytest.param("openvino", "bfloat16", marks=_needs("openvino")),
    pytest.param("onnxruntime", "int8", marks=_needs("onnxruntime")),
]


def _window(path: Path) -> list[np.ndarray]:
    info = probe(path)
    frames: list[np.ndarray] = []
    times = window_times(centre_window_start(info.duration_s))
    sample_file(path, {"c": times}, lambda _n, s: frames.append(s.frame.rgb), info=info)
    return frames


@pytest.fixture(scope="module")
def windows(shared_clips: Path) -> list[list[np.ndarray]]:
    """Centre windows of six shared clips (real and generated, several codecs)."""
    clips = sorted(p for p in shared_clips.iterdir() if p.suffix in (".mp4", ".avi", ".gif"))
    return [_window(p) for p in clips[::3]]


def _features(emb: backends.Embedder, windows: list[list[np.ndarray]]) -> np.ndarray:
    return np.stack(
        [window_features(emb.embed(w).astype(np.float64)).features for w in windows]
    )


@pytest.mark.parametrize(("runtime", "mode"), RUNTIME_MODES)
def test_features_match_eager_torch_within_the_mode_bound(
    runtime: str, mode: str, tiny_model_dir: Path, windows: list[list[np.ndarray]],
    tmp_path: Path,
) -> None:
    ref = make_embedder(str(tiny_model_dir), "cpu", backend="torch")
    calibration = None
    if mode == "int8":
        calibration = backends.calibration_pixels(
            [f for w in windows[1::2] for f in w[::4]], ref.backbone
        )
    emb = make_embedder(
        str(tiny_model_dir), "cpu", backend=runtime, mode=mode, cache_dir=tmp_path,
        calibration=calibration,
    )
    runs = "float32" if mode == "bfloat16" and not backends.bf16_computes() else mode
    assert (emb.backend, emb.backend_mode) == (runtime, runs)
    drift = feature_drift(_features(emb, windows), _features(ref, windows))
    assert drift.max() <= MODE_BOUND[mode], f"{runtime} {mode}: drift {drift.max():.3g}"
    # the contract: all tokens after the final LayerNorm, flattened, float32
    out = emb.embed(windows[0][:3])
    assert out.dtype == np.float32 and out.shape == (3, emb.embedding_dim)


@_needs("onnxruntime")
def test_every_batch_size_runs_through_one_graph(tiny_model_dir: Path, tmp_path: Path) -> None:
    bb = load_backbone(str(tiny_model_dir), "cpu")
    runner, _ = build_runner(bb, "onnxruntime", cache_dir=tmp_path)
    x = torch.rand(5, 3, 224, 224)
    with torch.inference_mode():
        want = bb.model(pixel_values=x).last_hidden_state
    for n in (1, 2, 5):
        assert torch.allclose(runner(x[:n]), want[:n], atol=1e-4)


@pytest.mark.parametrize("runtime", ["auto", "torch", "tensorrt"])
def test_a_graph_is_built_for_a_graph_runtime_only(
    runtime: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """``auto`` (resolved elsewhere), torch (no graph) or an unknown name is refused,
    not built as another runtime's graph under that name."""
    bb = load_backbone(str(tiny_model_dir), "cpu")
    with pytest.raises(ValueError, match="onnxruntime or openvino"):
        build_runner(bb, runtime, cache_dir=tmp_path)
    assert not list(tmp_path.iterdir())


def _entry(tmp_path: Path) -> Path:
    (entry,) = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    return entry


@_needs("onnxruntime")
@pytest.mark.parametrize("damage", ["corrupt", "truncate", "remove", "no-manifest", "stale"])
def test_a_damaged_or_stale_cache_entry_is_rebuilt_never_loaded(
    damage: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    bb = load_backbone(str(tiny_model_dir), "cpu")
    _, first = build_runner(bb, "onnxruntime", cache_dir=tmp_path)
    _, again = build_runner(bb, "onnxruntime", cache_dir=tmp_path)
    assert first.built and not again.built
    entry = _entry(tmp_path)
    graph = entry / "graph.onnx"
    if damage == "corrupt":
        data = bytearray(graph.read_bytes())
        data[len(data) // 2] ^= 0xFF
        graph.write_bytes(bytes(data))
    elif damage == "truncate":
        graph.write_bytes(graph.read_bytes()[:1000])
    elif damage == "remove":
        graph.unlink()
    elif damage == "no-manifest":
        (entry / graphs.MANIFEST).unlink()
    else:  # built by another runtime version under the same directory name
        manifest = json.loads((entry / graphs.MANIFEST).read_text())
        manifest["key"]["runtime_version"] = "0.0.1"
        (entry / graphs.MANIFEST).write_text(json.dumps(manifest))
    loaded: list[bytes] = []
    real = graphs._onnxruntime_runner

    def spy(files: dict[str, bytes], threads: int) -> graphs.Runner:
        loaded.append(files["graph.onnx"])
        return real(files, threads)

    mp = pytest.MonkeyPatch()
    mp.setattr(graphs, "_onnxruntime_runner", spy)
    try:
        runner, rebuilt = build_runner(bb, "onnxruntime", cache_dir=tmp_path)
    finally:
        mp.undo()
    assert rebuilt.built
    # what was loaded is the fresh graph, and it is what the repaired entry holds
    manifest = json.loads((entry / graphs.MANIFEST).read_text())
    assert loaded == [(entry / "graph.onnx").read_bytes()]
    assert graphs.read_verified(entry, manifest["key"]) is not None
    x = torch.rand(2, 3, 224, 224)
    with torch.inference_mode():
        want = bb.model(pixel_values=x).last_hidden_state
    assert torch.allclose(runner(x), want, atol=1e-4)


def test_other_weights_make_another_entry(tmp_path: Path) -> None:
    from tests.conftest import build_tiny_dinov2

    a = load_backbone(str(build_tiny_dinov2(tmp_path / "a", seed=0)), "cpu")
    b = load_backbone(str(build_tiny_dinov2(tmp_path / "b", seed=1)), "cpu")
    ka = graphs.graph_key(a, "onnxruntime", "float32", None)
    kb = graphs.graph_key(b, "onnxruntime", "float32", None)
    assert ka != kb and ka["weights_sha256"] != kb["weights_sha256"]


@pytest.mark.parametrize("mode", ["float32", "bfloat16", "int8"])
def test_auto_never_picks_a_mode_over_the_bound(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for present in ({"torch"}, {"torch", "onnxruntime"}, {"torch", "openvino", "onnxruntime"}):
        rt, md = choose_backend("auto", mode, CPU, lambda r, p=present: r in p)  # type: ignore[misc]
        assert rt in present and within_bounds(rt, md)
        assert MEASURED_DRIFT[(rt, md)][0] <= DRIFT_BOUND
    # a runtime whose float32 were measured over the bound is passed over
    monkeypatch.setitem(MEASURED_DRIFT, ("openvino", "float32"), (0.02, 0.0))
    assert choose_backend("auto", mode, CPU, lambda r: True) == ("onnxruntime", "float32")
    # and on CUDA auto is torch, as before
    assert choose_backend("auto", mode, torch.device("cuda"), lambda r: True) == (
        "torch", "float32",
    )


def test_reduced_modes_over_the_bound_are_still_offered_by_name() -> None:
    over = [k for k in MEASURED_DRIFT if not within_bounds(*k)]
    assert over, "the measured table lists no reduced mode over the bound"
    for rt, md in over:
        runs = "float32" if md == "bfloat16" and not backends.bf16_computes() else md
        assert choose_backend(rt, md, CPU, lambda r: True) == (rt, runs)


@_needs("openvino")
@pytest.mark.parametrize("capped", [True, False])
def test_bfloat16_where_it_cannot_compute_runs_float32_and_says_so(capped: bool) -> None:
    """OpenVINO asked for bf16 under an AVX2 cap computes float32 silently (BENCHMARKS.md,
    issue 22 third part): the choice says float32 and a WARNING says why. A fresh
    process: OpenVINO reads its cap once."""
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    for var in ("ONEDNN_MAX_CPU_ISA", "OV_CPU_MAX_ISA"):
        env.pop(var, None)
        if capped:
            env[var] = "AVX2"
    code = ("import logging, torch; logging.basicConfig(); "
            "from monitor.core.backends import choose_backend; "
            "from monitor.config import ModelSettings; "
            "from workers.doctor_cmd import _backends; "
            "print(*choose_backend('openvino', 'bfloat16', torch.device('cpu'))); "
            "m = ModelSettings(device='cpu', backend='openvino', backend_mode='bfloat16'); "
            "print('doctor:', _backends(m, False).get('note', 'no note'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    runs, doctor = out.stdout.splitlines()
    if capped:
        assert runs.split() == ["openvino", "float32"]
        assert "no bfloat16 unit" in out.stderr and "float32 runs" in out.stderr
        assert doctor == f"doctor: {backends.BF16_FALLBACK}"
    elif backends.has_bf16():
        assert runs.split() == ["openvino", "bfloat16"]
        assert "bfloat16 unit" not in out.stderr and doctor == "doctor: no note"


def test_a_missing_runtime_names_what_to_install() -> None:
    with pytest.raises(MissingRuntime, match=r"pip install 'restrav-monitor\[cpu-fast\]'"):
        choose_backend("openvino", "float32", CPU, lambda r: r == "torch")
    with pytest.raises(ConfigError, match="openvino"):
        choose_backend("onnxruntime", "bfloat16", CPU, lambda r: True)


def test_without_the_extra_everything_runs_on_torch(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backends, "installed", lambda r: r == "torch")
    emb = make_embedder(str(tiny_model_dir), "cpu", backend="auto")
    assert emb.backend == "torch" and emb.runner is None
    with pytest.raises(MissingRuntime):
        make_embedder(str(tiny_model_dir), "cpu", backend="onnxruntime")


def test_cli_exits_3_with_one_line_when_the_runtime_is_missing(
    tiny_model_dir: Path, shared_clips: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from workers.cli import main

    monkeypatch.setattr(backends, "installed", lambda r: r == "torch")
    clip = next(iter(sorted(shared_clips.glob("*.mp4"))))
    rc = main(["score", str(clip), "--model", str(tiny_model_dir), "--device", "cpu",
               "--classifier", "none", "--backend", "openvino"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 3
    assert len(err) == 1 and "pip install 'restrav-monitor[cpu-fast]'" in err[0]


def test_drift_is_relative_to_the_feature_or_its_spread() -> None:
    ref = np.array([[10.0, 0.0], [30.0, 2.0]])
    mode = np.array([[10.1, 0.01], [30.0, 2.0]])
    d = feature_drift(mode, ref)
    # feature 0: |0.1| / max(10, std 10) = 0.01; feature 1 at 0: |0.01| / std 1 = 0.01
    assert d[0, 0] == pytest.approx(0.01) and d[0, 1] == pytest.approx(0.01)
    assert d[1].max() == 0.0


@_needs("onnxruntime")
def test_settings_and_video_embedder_reach_the_same_constructor(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("sklearn", reason="VideoEmbedder needs the train extra")
    monkeypatch.setattr(graphs, "default_cache_dir", lambda: tmp_path)
    from monitor.config import load_settings
    from monitor.learn.estimators import VideoEmbedder
    from workers.common import build_embedder

    settings = load_settings(None, model={
        "ref": str(tiny_model_dir), "device": "cpu", "backend": "onnxruntime",
        "graph_cache": tmp_path,
    })
    emb = build_embedder(settings)
    assert (emb.backend, emb.backend_mode) == ("onnxruntime", "float32")
    ve = VideoEmbedder(model=str(tiny_model_dir), device="cpu", backend="onnxruntime")
    assert ve.embedder().backend == "onnxruntime"
    assert VideoEmbedder(model=str(tiny_model_dir), device="cpu").embedder().backend == "torch"
