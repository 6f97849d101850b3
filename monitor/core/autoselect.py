"""``--backend auto`` on a CPU: the fastest exact-enough runtime, measured once per machine.

Contract:

* :func:`choose_auto` is given the candidates, the (runtime, mode) pairs that may run
  (:func:`monitor.core.backends.auto_candidates`: installed, supported by this CPU's flags
  and within the drift bound); it never returns anything else. It times each candidate
  side by side (round-robin, the same pixels, median of the rounds) on the backbone,
  checks each one's output against eager torch float32 on those pixels (a runtime whose
  hidden states differ by more than :data:`EMBEDDING_CHECK` is dropped and logged), and
  returns the fastest.
* The decision is cached in ``<cache_dir>/auto-<key id>.json`` (JSON data, nothing
  executed), keyed by :func:`auto_key`: the CPU's model and flags, the instruction-set
  caps the libraries are run under (:data:`ISA_CAP_VARS`) and the ISA torch dispatches
  to, torch's and the runtimes' versions, the weights' SHA-256, the input size, the
  batch size, the threads and how the runners are configured
  (:data:`monitor.core.graphs.RUNNER_VERSION`). A process capped to AVX2 on an AVX-512
  CPU therefore never reuses the uncapped decision, and :func:`isa_flags` (the CPU's flags less what
  the caps forbid) is what the candidates are filtered by. A file whose key differs,
  that cannot be read, or whose recorded choice is not among today's candidates is
  ignored and the measurement runs again (then overwrites it).
* The clock is injectable (``clock``) so tests can script the timings; nothing else is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .backbone import Backbone
from .graphs import (
    RUNNER_VERSION,
    Runner,
    build_runner,
    default_cache_dir,
    runtime_version,
    weights_sha256,
)

log = logging.getLogger("restrav.backends")

SELECT_VERSION = 1
"""Bumped when the measurement changes: every cached decision is then stale."""

ROUNDS = 3
"""Timed rounds per decision (each runs every candidate once, in turn)."""

EMBEDDING_CHECK: dict[str, float] = {"float32": 1e-3, "bfloat16": 0.05, "int8": 0.1}
"""Largest relative error of a candidate's hidden states (per frame, against eager torch
float32 on the same pixels) before it is dropped as broken on this machine; float32
graphs measured 8e-7 (BENCHMARKS.md)."""


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``; empty where it cannot be read)."""
    return frozenset(_cpuinfo().get("flags", "").split())


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; "" where it cannot be read)."""
    return _cpuinfo().get("model name", "")


ISA_CAP_VARS: tuple[str, ...] = (
    "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "OV_CPU_MAX_ISA", "ATEN_CPU_CAPABILITY",
    "MKL_ENABLE_INSTRUCTIONS",
)
"""Environment variables that cap the instruction set a library dispatches to: oneDNN
(torch's and OpenVINO's), OpenVINO's own kernels, ATen's vectorised kernels and MKL
(torch's float32 GEMM). Each is read by its library once, at its first use, so its
value at start-up is the one in force. ONNX Runtime has none (MLAS dispatches on
CPUID): a capped process still runs it at the CPU's full ISA."""

_AVX512 = ("avx512", "amx")
_ABOVE_AVX2 = (*_AVX512, "avx_vnni", "avx_ne_convert", "avx_ifma")
_ABOVE_AVX512_CORE = ("avx512_vnni", "avx512_bf16", "avx512_fp16", "amx")
_CAP_REMOVES: dict[str, tuple[str, ...]] = {
    "DEFAULT": ("avx2", *_ABOVE_AVX2), "SSE41": ("avx2", *_ABOVE_AVX2),
    "SSE4_2": ("avx2", *_ABOVE_AVX2), "AVX": ("avx2", *_ABOVE_AVX2),
    "AVX2": _ABOVE_AVX2, "AVX2_VNNI": _AVX512, "AVX2_VNNI_2": _AVX512,
    "AVX512_CORE": _ABOVE_AVX512_CORE,
    "AVX512_CORE_VNNI": ("avx512_bf16", "avx512_fp16", "amx"),
    "AVX512_E1": ("avx512_bf16", "avx512_fp16", "amx"),
    "AVX512_CORE_BF16": ("avx512_fp16", "amx"),
    "AVX512_CORE_FP16": ("amx",), "AVX10_1_512": ("amx",),
}
"""A cap's value (upper case) -> prefixes of the /proc/cpuinfo flags it forbids. ``AVX512``
is oneDNN-free (ATen's and MKL's name): ATen's AVX512 forbids nothing, MKL's means
AVX512_CORE; a value not listed forbids nothing (it still keys the decision)."""


def isa_caps(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The :data:`ISA_CAP_VARS` set in ``env`` (default the process's), values upper case."""
    e = os.environ if env is None else env
    return {v: e[v].strip().upper() for v in ISA_CAP_VARS if e.get(v, "").strip()}


def capped_flags(flags: frozenset[str], caps: Mapping[str, str]) -> frozenset[str]:
    """``flags`` less every flag one of ``caps`` (:func:`isa_caps`) forbids: the
    strictest cap wins, since each caps some part of the forward pass."""
    removed: set[str] = set()
    for var, value in caps.items():
        prefixes: tuple[str, ...]
        if value == "AVX512":
            prefixes = _ABOVE_AVX512_CORE if var == "MKL_ENABLE_INSTRUCTIONS" else ()
        else:
            prefixes = _CAP_REMOVES.get(value, ())
        removed.update(f for f in flags if f.startswith(prefixes))
    return flags - removed


def isa_flags(env: Mapping[str, str] | None = None) -> frozenset[str]:
    """The CPU's flags as the libraries may use them: :func:`cpu_flags` less what the
    instruction-set caps in ``env`` forbid (:func:`capped_flags`)."""
    return capped_flags(cpu_flags(), isa_caps(env))


def isa_in_use() -> dict[str, Any]:
    """What says which instruction set the libraries run at in this process: the caps
    (:func:`isa_caps`) and the ISA torch's ATen kernels dispatch to (read by torch once,
    at import)."""
    return {"isa_caps": isa_caps(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}


def _cpuinfo() -> dict[str, str]:
    """The first processor's ``key: value`` lines of ``/proc/cpuinfo``."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        out.setdefault(key.strip(), value.strip())
    return out


def auto_key(backbone: Backbone, batch_size: int, threads: int) -> dict[str, Any]:
    """What an ``auto`` decision depends on; any difference measures again."""
    return {
        "cpu_model": cpu_model(),
        "cpu_flags": sorted(cpu_flags()),
        **isa_in_use(),
        "torch_version": torch.__version__,
        "onnxruntime_version": runtime_version("onnxruntime"),
        "openvino_version": runtime_version("openvino"),
        "weights_sha256": weights_sha256(backbone.model),
        "image_size": backbone.image_size,
        "pos_embed": backbone.pos_embed,
        "batch_size": batch_size,
        "threads": threads,
        "select_version": SELECT_VERSION,
        "runner_version": RUNNER_VERSION,
    }


def decision_path(cache_dir: Path, key: dict[str, Any]) -> Path:
    """The file that holds the decision for ``key``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_dir / f"auto-{digest}.json"


@dataclass
class AutoChoice:
    """What ``auto`` picked and why (for logs and ``restrav doctor``)."""

    runtime: str
    mode: str
    frames_per_s: dict[str, float]
    """``"runtime mode"`` -> frames/s measured side by side (batch ``batch_size``)."""
    dropped: dict[str, str]
    """``"runtime mode"`` -> why it was not considered (failed to build, output differs)."""
    measured: bool
    """True when measured in this call; False when read from the cached decision."""
    path: Path
    runner: Runner | None = field(default=None, repr=False)
    """The chosen runtime's forward when it was built by this measurement (else None:
    the caller builds it from the graph cache)."""


def read_decision(
    path: Path, key: dict[str, Any], candidates: Sequence[tuple[str, str]]
) -> AutoChoice | None:
    """The cached decision at ``path``, or None when missing, unreadable, made under
    another key, or naming a choice that is not among ``candidates``."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key:
        return None
    choice = data.get("choice")
    fps = data.get("frames_per_s")
    dropped = data.get("dropped", {})
    if (
        not isinstance(choice, list)
        or len(choice) != 2
        or (choice[0], choice[1]) not in set(candidates)
        or not isinstance(fps, dict)
        or not all(isinstance(v, (int, float)) for v in fps.values())
        or not isinstance(dropped, dict)
    ):
        log.warning("auto backend decision %s names no allowed choice; measuring again", path)
        return None
    return AutoChoice(
        str(choice[0]), str(choice[1]), {str(k): float(v) for k, v in fps.items()},
        {str(k): str(v) for k, v in dropped.items()}, False, path,
    )


def write_decision(path: Path, key: dict[str, Any], choice: AutoChoice) -> None:
    """Write a decision atomically (a reader sees the old file or the new one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "key": key,
        "choice": [choice.runtime, choice.mode],
        "frames_per_s": choice.frames_per_s,
        "dropped": choice.dropped,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    fd, tmp = tempfile.mkstemp(prefix=".auto-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _torch_runner(backbone: Backbone) -> Runner:
    def run(pixels: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out: torch.Tensor = backbone.model(pixel_values=pixels).last_hidden_state
            return out

    return run


def _rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest per-frame ``|out - ref| / |ref|`` (L2 over each frame's hidden states)."""
    n = ref.shape[0]
    diff = (out.reshape(n, -1).double() - ref.reshape(n, -1).double()).norm(dim=1)
    return float((diff / ref.reshape(n, -1).double().norm(dim=1).clamp_min(1e-30)).max())


def measure(
    backbone: Backbone,
    candidates: Sequence[tuple[str, str]],
    batch_size: int,
    threads: int,
    cache_dir: Path | None,
    clock: Callable[[], float] = time.perf_counter,
    rounds: int = ROUNDS,
) -> tuple[dict[str, float], dict[str, str], dict[str, Runner]]:
    """Frames/s of each candidate side by side, why any was dropped, and their runners.

    Every candidate runs once untimed (warm-up, and its output is checked against eager
    torch float32), then ``rounds`` timed rounds each run every candidate once in turn
    on the same ``batch_size`` pixels; a candidate's rate is ``batch_size`` over its
    median time.
    """
    gen = torch.Generator().manual_seed(0)
    size = backbone.image_size
    pixels = torch.rand(batch_size, 3, size, size, generator=gen)
    reference = _torch_runner(backbone)(pixels)
    runners: dict[str, Runner] = {}
    dropped: dict[str, str] = {}
    for rt, md in candidates:
        name = f"{rt} {md}"
        try:
            run = (
                _torch_runner(backbone)
                if rt == "torch"
                else build_runner(backbone, rt, md, threads, cache_dir)[0]
            )
            err = _rel_error(run(pixels), reference)
        # candidate boundary (sanctioned): a third-party runtime may fail in any way while
        # it builds or runs; it is logged, named in the decision (doctor shows it), not chosen
        except Exception as exc:  # noqa: BLE001
            dropped[name] = f"failed: {type(exc).__name__}: {exc}"[:300]
            log.warning("auto backend: %s dropped (%s)", name, dropped[name])
            continue
        if rt != "torch" and not err <= EMBEDDING_CHECK.get(md, 0.0):
            dropped[name] = f"output differs from eager torch float32 by {err:.2g}"
            log.warning("auto backend: %s dropped (%s)", name, dropped[name])
            continue
        runners[name] = run
    times: dict[str, list[float]] = {n: [] for n in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            t0 = clock()
            run(pixels)
            times[name].append(clock() - t0)
    fps = {n: batch_size / max(statistics.median(t), 1e-9) for n, t in times.items()}
    return fps, dropped, runners


def choose_auto(
    backbone: Backbone,
    candidates: Sequence[tuple[str, str]],
    batch_size: int = 8,
    threads: int = 1,
    cache_dir: Path | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> AutoChoice:
    """The fastest of ``candidates`` on this machine, from the cached decision or measured
    (and cached). ``candidates`` must hold eager torch float32 (the fallback when every
    other candidate is dropped); see the module docstring."""
    if ("torch", "float32") not in candidates:
        raise ValueError("auto's candidates must include torch float32")
    cache = cache_dir or default_cache_dir()
    key = auto_key(backbone, batch_size, threads)
    path = decision_path(cache, key)
    cached = read_decision(path, key, candidates)
    if cached is not None:
        return cached
    if len(candidates) == 1:
        return AutoChoice("torch", "float32", {}, {}, True, path)
    log.info("auto backend: measuring %s on this machine (once; cached in %s)",
             ", ".join(f"{r} {m}" for r, m in candidates), path)
    fps, dropped, runners = measure(backbone, candidates, batch_size, threads, cache_dir, clock)
    best = max(fps, key=lambda n: fps[n]) if fps else "torch float32"
    rt, md = best.split(" ")
    choice = AutoChoice(rt, md, fps, dropped, True, path, runners.get(best))
    write_decision(path, key, choice)
    log.info("auto backend: %s (%s)", best,
             ", ".join(f"{n} {v:.2f} frames/s" for n, v in fps.items()))
    return choice
