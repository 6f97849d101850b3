"""Backbone runtimes: eager torch, ONNX Runtime, OpenVINO (the one place every path picks one).

Contract:

* :func:`make_embedder` is the only constructor of an :class:`~monitor.core.embed.Embedder`
  that the composition roots (score, serve's engine, the queue worker, extract) and
  :class:`~monitor.learn.estimators.VideoEmbedder` use. It loads the backbone with
  :func:`~monitor.core.backbone.load_backbone` and, for ``backend`` other than ``torch``,
  runs it through an exported graph. The output contract does not change: per frame,
  all tokens after the final LayerNorm, flattened, float32.
* ``backend`` is ``auto``, ``torch``, ``onnxruntime`` or ``openvino``; ``mode`` (the
  runtime's precision) is ``float32``, ``bfloat16`` (OpenVINO on CPUs with AVX512_BF16
  or AMX) or ``int8`` (ONNX Runtime static quantisation calibrated on real frames, the
  LayerNorms, softmaxes and the last block kept in float32; it needs calibration frames).
  :data:`MEASURED_DRIFT` holds each mode's drift measured by ``bench/bench_backends.py``
  (definition: :func:`feature_drift`); ``auto`` never picks a mode whose drift exceeds
  :data:`DRIFT_BOUND`, and on CUDA it is torch. On a CPU, ``auto`` considers the
  :func:`auto_candidates` (installed, supported by the CPU's flags, within the bounds) and
  :func:`~monitor.core.autoselect.choose_auto` picks the fastest by a short measurement
  on this machine, cached per CPU, runtime versions and model.
* A runtime asked for by name and not installed raises :class:`MissingRuntime` (a
  ConfigError: one line naming what to install, exit 3 in the CLI).
* Exported graphs and their verified cache are :mod:`monitor.core.graphs`: a graph is
  loaded only from bytes whose SHA-256 was checked; a missing, stale or corrupted
  entry is rebuilt, never loaded.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch

from ..errors import ConfigError
from ..types import RGBArray
from .autoselect import AutoChoice, choose_auto, isa_flags
from .backbone import Backbone, CompileMode, load_backbone, resolve_device
from .embed import Embedder, preprocess
from .graphs import PACKAGES, build_runner, default_threads

log = logging.getLogger("restrav.backends")

BackendName = Literal["auto", "torch", "onnxruntime", "openvino"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "onnxruntime", "openvino")
RuntimeMode = Literal["float32", "bfloat16", "int8"]
MODES: tuple[str, ...] = ("float32", "bfloat16", "int8")

CPU_FAST_EXTRA = "pip install 'restrav-monitor[cpu-fast]'"

EXPORTER_VERSION = 1
"""Bumped whenever the export changes what a graph computes: every cached graph is then stale."""

DRIFT_BOUND = 0.01
"""The largest feature drift ``auto`` accepts (1 %, :func:`feature_drift`)."""
PROB_BOUND = 0.01
"""The largest change of P(AI) under the default classifier ``auto`` accepts."""

MEASURED_DRIFT: dict[tuple[str, str], tuple[float, float]] = {
    ("torch", "float32"): (0.0, 0.0),
    ("onnxruntime", "float32"): (4e-6, 2e-6),
    ("openvino", "float32"): (4e-6, 2e-6),
    ("openvino", "bfloat16"): (0.75, 0.38),
    ("onnxruntime", "int8"): (1.5, 0.89),
}
"""(runtime, mode) -> (feature drift, largest P(AI) change) on the 16 shared clips' centre
windows, random real-size ViT-S/14, measured by ``python -m bench.bench_backends``
(BENCHMARKS.md, "CPU backends"), rounded up. A mode missing here is never picked by
``auto``. These are measured on random weights: rerun the benchmark with ``--model`` on
the real checkpoint before trusting a reduced mode."""

MEASURED_ON: dict[tuple[str, str], dict[str, float]] = {
    ("onnxruntime", "float32"): {"Xeon AMX": 2.3e-6, "EPYC AVX-512 (6 clips)": 4.5e-7,
                                 "EPYC, torch capped to AVX2": 3.4e-6},
    ("openvino", "float32"): {"Xeon AMX": 2.8e-6, "EPYC AVX-512": 1.9e-6,
                              "EPYC capped to AVX2": 3.6e-6},
    ("openvino", "bfloat16"): {"Xeon AMX": 0.72, "EPYC AVX512_BF16 without AMX": 0.72},
    ("onnxruntime", "int8"): {"Xeon AMX": 1.5},
}
"""(runtime, mode) -> CPU -> the drift measured there (BENCHMARKS.md, 16 shared clips
unless said), shown by ``restrav doctor``; :data:`MEASURED_DRIFT` holds at least the
largest of them."""

AUTO_ORDER: tuple[tuple[str, str], ...] = (
    ("openvino", "float32"),
    ("onnxruntime", "float32"),
    ("openvino", "bfloat16"),
    ("onnxruntime", "int8"),
    ("torch", "float32"),
)
"""Every (runtime, mode) ``auto`` may consider on a CPU, in the order used before a
measurement (fastest first on the development machine, BENCHMARKS.md); the measurement
(:mod:`monitor.core.autoselect`) decides among those :func:`auto_candidates` keeps."""

INT8_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
"""CPU flags that make int8 matmuls fast (without one, int8 is not considered)."""


def feature_drift(
    features: npt.ArrayLike, reference: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """Per clip and feature, the drift of ``features`` from ``reference`` (both ``(clips, 21)``,
    the reference from eager torch float32 on the same clips):
    ``|f - f_ref| / max(|f_ref|, std of that feature over the clips)``.

    A mode's drift is the maximum of the result; the one definition used by the
    benchmark, the tests and ``restrav doctor``.
    """
    f = np.asarray(features, dtype=np.float64)
    ref = np.asarray(reference, dtype=np.float64)
    if f.shape != ref.shape or ref.ndim != 2:
        raise ValueError(f"expected two (clips, features) arrays, got {f.shape} and {ref.shape}")
    scale = np.maximum(np.abs(ref), ref.std(axis=0, keepdims=True))
    out: npt.NDArray[np.float64] = np.abs(f - ref) / np.where(scale > 0, scale, 1.0)
    return out


class MissingRuntime(ConfigError):
    """A backend was asked for whose runtime is not installed."""


def installed(runtime: str) -> bool:
    """True when ``runtime`` (``torch``, ``onnxruntime``, ``openvino``) can be imported."""
    if runtime == "torch":
        return True
    return importlib.util.find_spec(runtime) is not None



def has_bf16(flags: frozenset[str] | None = None) -> bool:
    """True when the CPU computes bfloat16 natively (AVX512_BF16 or AMX-BF16), under the
    process's instruction-set caps (:func:`~monitor.core.autoselect.isa_flags`)."""
    f = isa_flags() if flags is None else flags
    return "avx512_bf16" in f or "amx_bf16" in f


def within_bounds(runtime: str, mode: str) -> bool:
    """True when the measured drift of (runtime, mode) is within :data:`DRIFT_BOUND` and
    :data:`PROB_BOUND` (False when it was never measured)."""
    measured = MEASURED_DRIFT.get((runtime, mode))
    return measured is not None and measured[0] <= DRIFT_BOUND and measured[1] <= PROB_BOUND


def supported(mode: str, flags: frozenset[str]) -> bool:
    """True when this CPU runs ``mode`` natively: bfloat16 needs AVX512_BF16 or AMX, int8
    a VNNI or AMX-INT8 unit; float32 runs everywhere."""
    if mode == "bfloat16":
        return has_bf16(flags)
    if mode == "int8":
        return bool(INT8_FLAGS & flags)
    return True


def auto_candidates(
    flags: frozenset[str], is_installed: Callable[[str], bool] = installed
) -> list[tuple[str, str]]:
    """What ``auto`` may run on a CPU with ``flags``: the :data:`AUTO_ORDER` entries that
    are installed, supported by the CPU and within the bounds (:func:`within_bounds`);
    torch float32 always."""
    return [
        (rt, md) for rt, md in AUTO_ORDER
        if is_installed(rt) and supported(md, flags) and within_bounds(rt, md)
    ]


def choose_backend(
    backend: str, mode: str, device: torch.device, is_installed: Callable[[str], bool] = installed
) -> tuple[str, str]:
    """Resolve ``(backend, mode)`` to the runtime and precision that will run.

    ``auto`` is torch float32 on CUDA; on a CPU the first of :func:`auto_candidates`
    (``mode`` is then ignored), the choice before :func:`make_embedder` measures them.
    A named backend must be installed (:class:`MissingRuntime` otherwise) and run on
    the CPU; its mode is kept as asked, whatever its drift (reported by ``restrav doctor``),
    except bfloat16 where it cannot compute (:func:`bf16_computes`): that resolves to
    float32 with a WARNING (:data:`BF16_FALLBACK`), so that what runs is what is reported.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if mode not in MODES:
        raise ConfigError(f"backend mode must be one of {', '.join(MODES)}, got {mode!r}")
    if backend == "auto":
        if device.type != "cpu":
            return "torch", "float32"
        return auto_candidates(isa_flags(), is_installed)[0]
    if backend == "torch":
        if mode != "float32":
            raise ConfigError(
                f"backend torch runs --dtype's precision; mode {mode!r} needs onnxruntime "
                "or openvino"
            )
        return "torch", "float32"
    if not is_installed(backend):
        raise MissingRuntime(
            f"backend {backend!r} needs the {PACKAGES[backend]} package: {CPU_FAST_EXTRA}"
        )
    if device.type != "cpu":
        raise ConfigError(f"backend {backend!r} runs on the CPU only; use --device cpu")
    if mode == "bfloat16" and backend != "openvino":
        raise ConfigError("mode bfloat16 is offered by the openvino backend only")
    if mode == "int8" and backend != "onnxruntime":
        raise ConfigError("mode int8 is offered by the onnxruntime backend only")
    if mode == "bfloat16" and not bf16_computes():
        log.warning("%s", BF16_FALLBACK)
        return backend, "float32"
    return backend, mode


BF16_FALLBACK = (
    "backend mode bfloat16: this CPU, under this process's instruction-set caps, has no "
    "bfloat16 unit (AVX512_BF16 or AMX-BF16, as OpenVINO reports it): OpenVINO would "
    "compute float32, so float32 runs (the same features and speed; `restrav doctor` "
    "shows the caps)"
)
"""Logged (WARNING) when bfloat16 is asked for where it cannot run."""


def bf16_computes(flags: frozenset[str] | None = None) -> bool:
    """True when OpenVINO computes bfloat16 here: the CPU's flags under the caps
    (:func:`has_bf16`) and OpenVINO's own view (``BF16`` among the CPU plugin's
    ``OPTIMIZATION_CAPABILITIES``; ``OV_CPU_MAX_ISA=AVX2`` removes it) both say so.
    Asked for bfloat16 where they do not, OpenVINO silently computes float32."""
    if not has_bf16(flags):
        return False
    if not installed("openvino"):
        return True  # the missing runtime is reported by whoever asks for it
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")



def calibration_pixels(frames: Sequence[RGBArray], backbone: Backbone) -> npt.NDArray[np.float32]:
    """Model input for calibration frames, preprocessed as the Embedder does (no
    normalisation: SPEC section 2)."""
    return preprocess(frames, backbone.image_size, "cpu").numpy()


def resolve_auto(
    backbone: Backbone,
    batch_size: int = 8,
    threads: int | None = None,
    cache_dir: Path | None = None,
    is_installed: Callable[[str], bool] = installed,
) -> AutoChoice:
    """What ``auto`` runs for ``backbone`` on this CPU: the fastest of
    :func:`auto_candidates`, measured once and cached
    (:func:`~monitor.core.autoselect.choose_auto`)."""
    n = threads or default_threads()
    return choose_auto(
        backbone, auto_candidates(isa_flags(), is_installed), batch_size, n, cache_dir
    )


def make_embedder(
    ref: str,
    device: str | torch.device = "auto",
    dtype: str = "float32",
    image_size: int = 224,
    batch_size: int = 8,
    normalize: Literal["none", "imagenet"] = "none",
    compile: CompileMode = "off",
    backend: str = "auto",
    mode: str = "float32",
    threads: int | None = None,
    cache_dir: Path | None = None,
    calibration: npt.NDArray[np.float32] | None = None,
) -> Embedder:
    """Load ``ref`` and wrap it in an Embedder running on the chosen backend.

    The one constructor every path uses (see the module docstring). A runtime backend
    needs ``dtype`` float32 and ``compile`` off (the graph is exported from the float32
    model; its precision is ``mode``). ``threads`` sets torch's and the runtime's
    intra-op threads (None: torch's default for torch, the process's cores for a runtime).
    ``auto`` on a CPU in float32 measures its candidates once per machine and model
    (:func:`resolve_auto`); with another dtype or compile it is torch.
    The Embedder's ``backend`` and ``backend_mode`` attributes say what runs.
    """
    dev = resolve_device(device) if isinstance(device, str) else device
    # checked before the (slow) model load: a missing runtime fails at once
    runtime, md = choose_backend(backend, mode, dev, installed)
    backbone = load_backbone(ref, dev, dtype, image_size)
    if runtime != "torch" and (dtype != "float32" or compile != "off"):
        if backend == "auto":
            runtime, md = "torch", "float32"
        else:
            raise ConfigError(
                f"backend {runtime!r} exports the float32 model: use --dtype float32 (its "
                "precision is the backend mode) and compile off"
            )
    if threads:
        torch.set_num_threads(threads)
    chosen = None
    if backend == "auto" and dev.type == "cpu" and dtype == "float32" and compile == "off":
        chosen = resolve_auto(backbone, batch_size, threads, cache_dir, installed)
        runtime, md = chosen.runtime, chosen.mode
    if runtime == "torch":
        emb = Embedder(backbone, batch_size=batch_size, normalize=normalize, compile=compile)
        emb.backend, emb.backend_mode = "torch", backbone.precision
        return emb
    if chosen is not None and chosen.runner is not None:
        runner = chosen.runner
    else:
        runner, info = build_runner(backbone, runtime, md, threads, cache_dir, calibration)
        log.info(
            "backbone on %s (%s)%s in %.1f s", runtime, md,
            ", graph built" if info.built else ", graph from cache", info.build_s,
        )
    emb = Embedder(backbone, batch_size=batch_size, normalize=normalize, runner=runner)
    emb.backend, emb.backend_mode = runtime, md
    return emb
