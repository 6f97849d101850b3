"""``--backend auto`` on a CPU (monitor/core/autoselect.py): it picks the fastest measured
candidate, never a mode over the drift bound (not even one a cached file names), its
cached decision is used only under the same key (CPU, flags, runtime versions, model,
batch, threads) and measured again when any of them changes, and ``restrav doctor``
shows the choice, the rates behind it and every mode's drift.

Real runtimes and the tiny random DINOv2; only the clock is scripted where a test needs
a given runtime to be the fastest.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.core import autoselect, backends
from monitor.core.autoselect import (
    ISA_CAP_VARS,
    AutoChoice,
    auto_key,
    capped_flags,
    choose_auto,
    decision_path,
    isa_caps,
    isa_flags,
)
from monitor.core.backbone import Backbone, load_backbone
from monitor.core.backends import (
    AUTO_ORDER,
    MEASURED_DRIFT,
    auto_candidates,
    make_embedder,
    within_bounds,
)

ROOT = Path(__file__).resolve().parents[1]
BOTH = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("openvino") is None,
    reason="needs onnxruntime and openvino (pip install 'restrav-monitor[cpu-fast]')",
)
ORT = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None,
    reason="onnxruntime not installed (pip install 'restrav-monitor[cpu-fast]')",
)
ALL_FLAGS = frozenset({"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"})


class ScriptedClock:
    """A clock for :func:`autoselect.measure`: each timed call (two readings) lasts the
    next of ``durations``; counts its readings."""

    def __init__(self, durations: list[float]) -> None:
        self.durations = iter(durations)
        self.t = 0.0
        self.readings = 0

    def __call__(self) -> float:
        self.readings += 1
        if self.readings % 2 == 0:
            self.t += next(self.durations)
        return self.t


@pytest.fixture(autouse=True)
def _uncapped(monkeypatch: pytest.MonkeyPatch) -> None:
    """No instruction-set cap from the environment the tests run in."""
    for var in ISA_CAP_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> Backbone:
    return load_backbone(str(tiny_model_dir), "cpu")


@BOTH
def test_auto_picks_the_fastest_measured_candidate_and_keeps_the_decision(
    tiny: Backbone, tmp_path: Path
) -> None:
    cands = [("onnxruntime", "float32"), ("openvino", "float32"), ("torch", "float32")]
    # per round: onnxruntime 1.0 s, openvino 0.5 s, torch 2.0 s (3 rounds)
    clock = ScriptedClock([1.0, 0.5, 2.0] * 3)
    first = choose_auto(tiny, cands, batch_size=4, threads=1, cache_dir=tmp_path, clock=clock)
    assert (first.runtime, first.mode, first.measured) == ("openvino", "float32", True)
    assert first.frames_per_s == {
        "onnxruntime float32": 4.0, "openvino float32": 8.0, "torch float32": 2.0
    }
    assert first.runner is not None and first.path.is_file()
    # the second process reads the decision: no measurement (the clock is never read)
    clock2 = ScriptedClock([0.1] * 9)
    again = choose_auto(tiny, cands, batch_size=4, threads=1, cache_dir=tmp_path, clock=clock2)
    assert (again.runtime, again.mode, again.measured) == ("openvino", "float32", False)
    assert again.frames_per_s == first.frames_per_s and clock2.readings == 0


def test_auto_candidates_are_always_within_the_bound() -> None:
    flag_sets = [frozenset(), frozenset({"avx2"}), ALL_FLAGS]
    runtimes = ("onnxruntime", "openvino")
    for flags, n in itertools.product(flag_sets, range(3)):
        for present in itertools.combinations(runtimes, n):
            have = {"torch", *present}
            cands = auto_candidates(flags, lambda r, h=have: r in h)  # type: ignore[misc]
            assert ("torch", "float32") in cands
            for rt, md in cands:
                assert rt in have and within_bounds(rt, md)
                assert MEASURED_DRIFT[(rt, md)][0] <= backends.DRIFT_BOUND
    # every reduced mode measured so far is over the bound: none is ever a candidate
    assert not [c for c in auto_candidates(ALL_FLAGS, lambda r: True) if c[1] != "float32"]


def test_the_bound_check_uses_the_worst_drift_measured_on_any_cpu() -> None:
    for key, per_cpu in backends.MEASURED_ON.items():
        assert MEASURED_DRIFT[key][0] >= max(per_cpu.values()), key


def test_a_reduced_mode_within_the_bound_needs_the_cpu_flags(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(MEASURED_DRIFT, ("openvino", "bfloat16"), (0.005, 0.001))
    assert ("openvino", "bfloat16") in auto_candidates(ALL_FLAGS, lambda r: True)
    assert ("openvino", "bfloat16") not in auto_candidates(frozenset({"avx2"}), lambda r: True)
    # and a float32 runtime measured over the bound drops out
    monkeypatch.setitem(MEASURED_DRIFT, ("openvino", "float32"), (0.02, 0.0))
    assert ("openvino", "float32") not in auto_candidates(ALL_FLAGS, lambda r: True)
    assert set(AUTO_ORDER) >= set(auto_candidates(ALL_FLAGS, lambda r: True))


@ORT
def test_a_cached_file_naming_a_mode_over_the_bound_is_not_followed(
    tiny: Backbone, tmp_path: Path
) -> None:
    cands = auto_candidates(ALL_FLAGS, lambda r: r in {"torch", "onnxruntime"})
    key = auto_key(tiny, 4, 1)
    path = decision_path(tmp_path, key)
    planted = AutoChoice("onnxruntime", "int8", {"onnxruntime int8": 99.0}, {}, True, path)
    autoselect.write_decision(path, key, planted)
    choice = choose_auto(tiny, cands, batch_size=4, threads=1, cache_dir=tmp_path,
                         clock=ScriptedClock([2.0, 1.0] * 3))
    assert choice.measured and (choice.runtime, choice.mode) == ("torch", "float32")
    assert json.loads(path.read_text())["choice"] == ["torch", "float32"]


CHANGES = ["cpu_model", "cpu_flags", "isa_cap", "runtime_version", "runner_version", "weights",
           "batch", "threads"]


@ORT
@pytest.mark.parametrize("change", CHANGES)
def test_the_decision_is_measured_again_when_its_key_changes(
    change: str, tiny: Backbone, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import build_tiny_dinov2

    cands = [("onnxruntime", "float32"), ("torch", "float32")]

    def decide(bb: Backbone = tiny, batch: int = 2, threads: int = 1) -> AutoChoice:
        return choose_auto(bb, cands, batch, threads, tmp_path)

    before = decide()
    assert before.measured and not decide().measured
    bb, batch, threads = tiny, 2, 1
    if change == "cpu_model":
        monkeypatch.setattr(autoselect, "cpu_model", lambda: "Another CPU")
    elif change == "cpu_flags":
        monkeypatch.setattr(autoselect, "cpu_flags", lambda: frozenset({"avx2"}))
    elif change == "isa_cap":  # the same CPU, the libraries capped to AVX2
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    elif change == "runtime_version":
        monkeypatch.setattr(autoselect, "runtime_version", lambda r: "0.0.1")
    elif change == "runner_version":  # the runners configured otherwise (streams, hints)
        monkeypatch.setattr(autoselect, "RUNNER_VERSION", autoselect.RUNNER_VERSION + 1)
    elif change == "weights":
        bb = load_backbone(str(build_tiny_dinov2(tmp_path / "other", seed=7)), "cpu")
    elif change == "batch":
        batch = 8
    else:
        threads = 2
    changed = decide(bb, batch, threads)
    assert changed.measured and changed.path != before.path
    assert not decide(bb, batch, threads).measured
    assert len(list(tmp_path.glob("auto-*.json"))) == 2


@ORT
def test_an_unreadable_decision_is_measured_again_and_replaced(
    tiny: Backbone, tmp_path: Path
) -> None:
    cands = [("onnxruntime", "float32"), ("torch", "float32")]
    first = choose_auto(tiny, cands, 2, 1, tmp_path)
    first.path.write_text('{"key": ')
    second = choose_auto(tiny, cands, 2, 1, tmp_path)
    assert second.measured and json.loads(second.path.read_text())["key"] == auto_key(tiny, 2, 1)


@ORT
def test_a_runtime_whose_output_differs_is_dropped(
    tiny: Backbone, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a negative bound: any output of a runtime counts as different from eager torch
    monkeypatch.setitem(autoselect.EMBEDDING_CHECK, "float32", -1.0)
    cands = [("onnxruntime", "float32"), ("torch", "float32")]
    choice = choose_auto(tiny, cands, 2, 1, tmp_path, clock=ScriptedClock([1.0] * 3))
    assert (choice.runtime, choice.mode) == ("torch", "float32")
    assert "differs from eager torch float32" in choice.dropped["onnxruntime float32"]
    assert list(choice.frames_per_s) == ["torch float32"]


@ORT
def test_make_embedder_auto_runs_what_the_decision_says(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    emb = make_embedder(str(tiny_model_dir), "cpu", batch_size=2, backend="auto",
                        threads=1, cache_dir=tmp_path)
    (path,) = tmp_path.glob("auto-*.json")
    decided = json.loads(path.read_text())["choice"]
    assert [emb.backend, emb.backend_mode] == decided
    assert within_bounds(emb.backend, emb.backend_mode)
    # another dtype: auto is eager torch without measuring
    emb16 = make_embedder(str(tiny_model_dir), "cpu", "bfloat16", backend="auto",
                          cache_dir=tmp_path / "none")
    assert emb16.backend == "torch" and not (tmp_path / "none").exists()


def _doctor(tiny_model_dir: Path, cache: Path) -> dict:  # type: ignore[type-arg]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "RESTRAV_MODEL__DEVICE": "cpu", "RESTRAV_MODEL__GRAPH_CACHE": str(cache),
           "RESTRAV_MODEL__BATCH_SIZE": "2"}
    proc = subprocess.run(
        [sys.executable, "-m", "workers.cli", "doctor", "--json", "-m", str(tiny_model_dir),
         "--backend", "auto"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report: dict = json.loads(proc.stdout)  # type: ignore[type-arg]
    return report


@ORT
def test_doctor_shows_the_auto_choice_and_each_modes_drift(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    first = _doctor(tiny_model_dir, tmp_path)["backend"]
    (path,) = tmp_path.glob("auto-*.json")
    decided = json.loads(path.read_text())
    assert first["runs"] == " ".join(decided["choice"])
    assert first["auto"]["decision"] == "measured now" and first["auto"]["file"] == str(path)
    assert len(first["auto"]["frames_per_s"]) == len(decided["frames_per_s"]) >= 2
    for (rt, md), (drift, _dp) in MEASURED_DRIFT.items():
        (line,) = [x for x in first["measured_drift"] if x.startswith(f"{rt} {md}:")]
        assert f"drift {drift:.2g}" in line
        for cpu, d in backends.MEASURED_ON.get((rt, md), {}).items():
            assert f"; {cpu} {d:.2g}" in line
        assert ("auto never picks it" in line) == (not within_bounds(rt, md))
    again = _doctor(tiny_model_dir, tmp_path)["backend"]
    assert again["auto"]["decision"] == "cached" and again["runs"] == first["runs"]


XEON = frozenset({"sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni",
                  "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_fp16"})


@pytest.mark.parametrize(("caps", "kept"), [
    ({}, XEON),
    ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, {"sse4_2", "avx", "avx2", "fma"}),
    ({"ATEN_CPU_CAPABILITY": "AVX2"}, {"sse4_2", "avx", "avx2", "fma"}),
    ({"ATEN_CPU_CAPABILITY": "DEFAULT"}, {"sse4_2", "avx", "fma"}),
    ({"ATEN_CPU_CAPABILITY": "AVX512"}, XEON),
    ({"MKL_ENABLE_INSTRUCTIONS": "AVX512"}, {"sse4_2", "avx", "avx2", "fma", "avx512f",
                                             "avx512bw", "avx_vnni"}),
    ({"OV_CPU_MAX_ISA": "AVX512_CORE_VNNI"}, XEON - {"avx512_bf16", "amx_bf16", "amx_int8",
                                                     "avx512_fp16"}),
    ({"DNNL_MAX_CPU_ISA": "AVX512_CORE_BF16"}, XEON - {"amx_bf16", "amx_int8",
                                                       "avx512_fp16"}),
    # the strictest of several caps wins
    ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX", "ATEN_CPU_CAPABILITY": "AVX2"},
     {"sse4_2", "avx", "avx2", "fma"}),
    ({"ONEDNN_MAX_CPU_ISA": "SOMETHING_NEW"}, XEON),
])
def test_an_isa_cap_removes_the_flags_above_it(caps: dict[str, str], kept: set[str]) -> None:
    assert capped_flags(XEON, caps) == kept


def test_under_an_avx2_cap_bf16_and_int8_are_not_candidates_and_the_key_differs(
    monkeypatch: pytest.MonkeyPatch, tiny: Backbone
) -> None:
    # a reduced mode within the bound (none is today) would be a candidate on this CPU
    monkeypatch.setitem(MEASURED_DRIFT, ("openvino", "bfloat16"), (0.005, 0.001))
    monkeypatch.setitem(MEASURED_DRIFT, ("onnxruntime", "int8"), (0.005, 0.001))
    monkeypatch.setattr(autoselect, "cpu_flags", lambda: XEON)
    everything = lambda r: True  # noqa: E731
    uncapped = auto_key(tiny, 8, 2)
    assert {("openvino", "bfloat16"), ("onnxruntime", "int8")} <= set(
        auto_candidates(isa_flags(), everything))
    assert backends.has_bf16()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    monkeypatch.setenv("OV_CPU_MAX_ISA", "AVX2")
    assert isa_caps() == {"ONEDNN_MAX_CPU_ISA": "AVX2", "OV_CPU_MAX_ISA": "AVX2"}
    assert not {f for f in isa_flags() if f.startswith(("avx512", "amx"))}
    assert [md for _, md in auto_candidates(isa_flags(), everything)] == ["float32"] * 3
    assert not backends.has_bf16()
    capped = auto_key(tiny, 8, 2)
    assert capped["isa_caps"] == isa_caps() and capped != uncapped
    assert decision_path(Path("/c"), capped) != decision_path(Path("/c"), uncapped)


def test_the_key_names_the_isa_torch_really_dispatches_to(tiny: Backbone) -> None:
    """In a fresh process started with ATen capped to AVX2, the key says so (torch reads
    the variable once, at import: only a new process shows it)."""
    code = ("import json; from monitor.core.autoselect import isa_in_use; "
            "print(json.dumps(isa_in_use()))")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ATEN_CPU_CAPABILITY": "avx2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=120).stdout
    isa = json.loads(out)
    assert isa["isa_caps"] == {"ATEN_CPU_CAPABILITY": "AVX2"}
    # AVX2 or lower (a CPU without AVX2 dispatches to DEFAULT); never AVX512
    assert isa["torch_cpu_capability"] in {"AVX2", "DEFAULT"}
    # and the decision's key carries what this process runs at
    key = auto_key(tiny, 8, 2)
    assert {k: key[k] for k in isa} == autoselect.isa_in_use()
