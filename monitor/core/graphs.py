"""Exported graphs of the backbone for the runtime backends, and their verified cache.

* :func:`build_runner` returns a callable ``(N, 3, S, S)`` float32 pixels ->
  ``(N, tokens, hidden)`` float32 final-LayerNorm states for ONNX Runtime or OpenVINO,
  in float32, bfloat16 (OpenVINO) or int8 (ONNX Runtime static quantisation, the
  sensitive ops kept in float32), building the graph or loading it from the cache.
* The cache (``cache_dir``, default ``~/.cache/restrav/graphs``) holds one directory
  per key (:func:`graph_key`: weights' SHA-256, image size, position embeddings,
  runtime, its version, torch's version, mode, calibration frames' hash, exporter
  version). A manifest written last records the key and each file's SHA-256
  (:func:`write_entry`); :func:`read_verified` returns the bytes only when every hash
  and the key match, and the graph is loaded from those same bytes (ONNX and OpenVINO
  IR are data: no code runs from them). A missing, stale or corrupted entry is rebuilt.

The choice of runtime and mode is :mod:`monitor.core.backends`'.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from ..errors import ConfigError
from .backbone import Backbone

log = logging.getLogger("restrav.backends")

EXPORTER_VERSION = 1
RUNNER_VERSION = 2
"""Bumped when a runner's configuration changes (threads, streams, hints: 2 is OpenVINO's
single-threaded streams, issue 22's fourth part). The graphs stay valid; what ``auto``
measured with the old runners does not (monitor.core.autoselect keys on it)."""
PACKAGES: dict[str, str] = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
"""Runtime name -> the Python distribution that provides it (both in the cpu-fast extra)."""


def runtime_version(runtime: str) -> str:
    """The installed version of a runtime's distribution ("" when not installed)."""
    try:
        return importlib.metadata.version(PACKAGES.get(runtime, runtime))
    except importlib.metadata.PackageNotFoundError:
        return ""


def default_threads() -> int:
    """CPU cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def default_cache_dir() -> Path:
    """``~/.cache/restrav/graphs``: where exported graphs are kept."""
    return Path.home() / ".cache" / "restrav" / "graphs"


# -- the cache ---------------------------------------------------------------------------


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes, bytes), in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def graph_key(
    backbone: Backbone, runtime: str, mode: str, calibration_sha256: str | None
) -> dict[str, Any]:
    """What a cached graph depends on; any difference makes it stale."""
    return {
        "weights_sha256": weights_sha256(backbone.model),
        "image_size": backbone.image_size,
        "pos_embed": backbone.pos_embed,
        "runtime": runtime,
        "runtime_version": runtime_version(runtime),
        "torch_version": torch.__version__,
        "mode": mode,
        "calibration_sha256": calibration_sha256,
        "exporter_version": EXPORTER_VERSION,
    }


def _key_id(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


MANIFEST = "manifest.json"


def read_verified(entry: Path, key: dict[str, Any]) -> dict[str, bytes] | None:
    """The files of a cache entry, read once and checked against its manifest.

    None (the caller rebuilds) when the manifest is missing or unreadable, records
    another key, or any file is missing or its SHA-256 differs. The bytes returned are
    the ones hashed: nothing is read from disk again after the check.
    """
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("key") != key:
        log.warning("graph cache %s is stale (built for other settings); rebuilding", entry)
        return None
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return None
    out: dict[str, bytes] = {}
    for name, digest in files.items():
        if not isinstance(name, str) or "/" in name or name.startswith("."):
            return None
        try:
            data = (entry / name).read_bytes()
        except OSError:
            log.warning("graph cache %s lacks %s; rebuilding", entry, name)
            return None
        if hashlib.sha256(data).hexdigest() != digest:
            log.warning("graph cache %s: %s fails its checksum; rebuilding", entry, name)
            return None
        out[name] = data
    return out


def write_entry(entry: Path, key: dict[str, Any], files: dict[str, bytes]) -> None:
    """Write a cache entry: files first, then the manifest, into a fresh directory that
    replaces ``entry`` (a reader never sees a manifest before its files)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        digests = {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}
        manifest = {"key": key, "files": digests}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        if entry.exists():
            shutil.rmtree(entry, ignore_errors=True)
        try:
            os.replace(tmp, entry)
        except OSError:
            # another process wrote the entry meanwhile: keep theirs (it is verified on
            # every load); this process runs from the bytes it built
            log.info("graph cache %s was written by another process meanwhile", entry)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# -- export and build ----------------------------------------------------------------------


class _Hidden(torch.nn.Module):
    """pixel_values -> last_hidden_state (the final LayerNorm of all tokens)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(pixel_values=pixels).last_hidden_state
        return out


def export_onnx(backbone: Backbone) -> bytes:
    """The backbone as an ONNX graph (opset 17, dynamic batch), float32, on the CPU."""
    model = _Hidden(backbone.model).eval()
    size = backbone.image_size
    with tempfile.TemporaryDirectory(prefix="restrav-export-") as d, warnings.catch_warnings():
        # the TorchScript exporter warns about its deprecation and traced shape checks
        warnings.simplefilter("ignore")
        path = Path(d) / "graph.onnx"
        torch.onnx.export(
            model,
            (torch.zeros(2, 3, size, size),),
            str(path),
            input_names=["pixels"],
            output_names=["hidden"],
            dynamic_axes={"pixels": {0: "n"}, "hidden": {0: "n"}},
            opset_version=17,
            dynamo=False,
        )
        return path.read_bytes()


SENSITIVE_OPS = ("LayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt", "Div", "Erf")
"""ONNX op types kept in float32 by the int8 mode (normalisations, softmax, GELU)."""


def quantize_int8(onnx_bytes: bytes, calibration: npt.NDArray[np.float32], layers: int) -> bytes:
    """Static int8 quantisation (QDQ, per-channel weights, symmetric activations) of an
    exported graph, calibrated on ``calibration`` pixels ``(N, 3, S, S)``; the
    :data:`SENSITIVE_OPS` nodes and every node of the last block stay float32."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.i = 0

        def get_next(self) -> dict[str, npt.NDArray[np.float32]] | None:
            if self.i >= len(calibration):
                return None
            # one frame at a time: the percentile calibration needs equal batch shapes
            batch = calibration[self.i : self.i + 1]
            self.i += 1
            return {"pixels": batch}

    graph = onnx.load_from_string(onnx_bytes)
    last = f"/model/encoder/layer.{layers - 1}/"
    exclude = [
        n.name for n in graph.graph.node if n.op_type in SENSITIVE_OPS or n.name.startswith(last)
    ]
    with tempfile.TemporaryDirectory(prefix="restrav-int8-") as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src, dst = Path(d) / "fp32.onnx", Path(d) / "int8.onnx"
        src.write_bytes(onnx_bytes)
        quantize_static(
            str(src),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm", "Conv"],
            nodes_to_exclude=exclude,
            calibrate_method=CalibrationMethod.Percentile,
            extra_options={"ActivationSymmetric": True, "CalibPercentile": 99.999},
        )
        return dst.read_bytes()


def _build_files(
    backbone: Backbone, runtime: str, mode: str, calibration: npt.NDArray[np.float32] | None
) -> dict[str, bytes]:
    onnx_bytes = export_onnx(backbone)
    if runtime == "onnxruntime":
        if mode == "int8":
            if calibration is None:
                raise ConfigError("mode int8 needs calibration frames (real frames of real clips)")
            layers = int(getattr(backbone.model.config, "num_hidden_layers", 1))
            onnx_bytes = quantize_int8(onnx_bytes, calibration, layers)
        return {"graph.onnx": onnx_bytes}
    import openvino as ov

    with tempfile.TemporaryDirectory(prefix="restrav-ov-") as d:
        src = Path(d) / "graph.onnx"
        src.write_bytes(onnx_bytes)
        model = ov.convert_model(str(src))
        ov.save_model(model, str(Path(d) / "graph.xml"), compress_to_fp16=False)
        return {
            "graph.xml": (Path(d) / "graph.xml").read_bytes(),
            "graph.bin": (Path(d) / "graph.bin").read_bytes(),
        }


@dataclass
class BuildInfo:
    """How a runtime graph came to be (for doctor, the benchmark and logs)."""

    runtime: str
    mode: str
    cache_entry: Path | None
    built: bool
    build_s: float


Runner = Callable[[torch.Tensor], torch.Tensor]
"""``(N, 3, S, S)`` float32 pixels -> ``(N, tokens, hidden)`` float32 hidden states."""


def _onnxruntime_runner(files: dict[str, bytes], threads: int) -> Runner:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # idle intra-op threads sleep instead of spinning: on two cores a spinning pool
    # takes the CPU that the streams' decode threads need between batches
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(files["graph.onnx"], so, providers=["CPUExecutionProvider"])

    def run(pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.detach().cpu().float().contiguous().numpy()
        return torch.from_numpy(session.run(None, {"pixels": x})[0])

    return run


def _openvino_runner(files: dict[str, bytes], threads: int, mode: str) -> Runner:
    """OpenVINO's forward: ``threads`` single-threaded streams (THROUGHPUT), a batch split
    across them in contiguous parts computed at once. On two cores this cost 9 % less CPU
    per frame than one stream of two threads (69 vs 76 ms, BENCHMARKS.md, issue 22
    fourth part): no barrier between the threads of every layer, so a thread preempted by
    decoding stalls only its own part."""
    import openvino as ov

    core = ov.Core()
    weights = ov.Tensor(np.frombuffer(files["graph.bin"], dtype=np.uint8).copy())
    model = core.read_model(files["graph.xml"].decode(), weights)
    config = {
        "INFERENCE_NUM_THREADS": threads,
        "INFERENCE_PRECISION_HINT": "bf16" if mode == "bfloat16" else "f32",
        "PERFORMANCE_HINT": "THROUGHPUT" if threads > 1 else "LATENCY",
        "NUM_STREAMS": threads,
        # no pinning: the decode threads share these cores, the OS places both
        "ENABLE_CPU_PINNING": False,
    }
    compiled = core.compile_model(model, "CPU", config)
    requests = [compiled.create_infer_request() for _ in range(threads)]

    def run(pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.detach().cpu().float().contiguous().numpy()
        parts = np.array_split(x, min(len(requests), len(x))) if len(x) else [x]
        for req, part in zip(requests, parts):
            req.start_async({0: part})
        outs = []
        for req, _ in zip(requests, parts):
            req.wait()
            outs.append(np.array(req.get_output_tensor(0).data, dtype=np.float32))
        return torch.from_numpy(outs[0] if len(outs) == 1 else np.concatenate(outs))

    return run


def build_runner(
    backbone: Backbone,
    runtime: str,
    mode: str = "float32",
    threads: int | None = None,
    cache_dir: Path | None = None,
    calibration: npt.NDArray[np.float32] | None = None,
) -> tuple[Runner, BuildInfo]:
    """A runtime's forward for ``backbone``, from the verified cache or built (and cached).

    ``runtime`` is ``onnxruntime`` or ``openvino`` (ValueError otherwise: ``auto`` is
    resolved by :func:`monitor.core.backends.resolve_auto`, torch needs no graph).
    ``calibration`` (pixels, int8 only) is part of the key: other frames, another graph.
    """
    import time

    if runtime not in ("onnxruntime", "openvino"):
        raise ValueError(f"no graph for runtime {runtime!r}: onnxruntime or openvino")

    cal_sha = (
        hashlib.sha256(np.ascontiguousarray(calibration, dtype=np.float32).tobytes()).hexdigest()
        if calibration is not None and mode == "int8"
        else None
    )
    key = graph_key(backbone, runtime, mode, cal_sha)
    entry = (cache_dir or default_cache_dir()) / f"{runtime}-{mode}-{_key_id(key)}"
    t0 = time.perf_counter()
    files = read_verified(entry, key)
    built = files is None
    if files is None:
        log.info("building the %s %s graph (once; cached in %s)", runtime, mode, entry)
        files = _build_files(backbone, runtime, mode, calibration if mode == "int8" else None)
        write_entry(entry, key, files)
    n = threads or default_threads()
    runner = (
        _onnxruntime_runner(files, n)
        if runtime == "onnxruntime"
        else _openvino_runner(files, n, mode)
    )
    return runner, BuildInfo(runtime, mode, entry, built, time.perf_counter() - t0)


