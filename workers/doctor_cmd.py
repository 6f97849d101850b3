"""`restrav doctor`: versions, devices, where the model would load from, which classifier
would score, Redis reachability."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import EXIT_OK, EXIT_SOME_FAILED, settings_from_args

if TYPE_CHECKING:
    from monitor.config import ModelSettings

HELP = "print versions, devices, model location, classifier and Redis reachability"


def register(sub: Any) -> None:
    """Add the `doctor` subcommand."""
    p: argparse.ArgumentParser = sub.add_parser(
        "doctor",
        help=HELP,
        description=HELP + ". Exits 1 when something needed to score is missing.",
    )
    p.add_argument("--config", type=Path, metavar="FILE", help="YAML settings file")
    p.add_argument("--model", "-m", metavar="M", help="model reference to check")
    p.add_argument("--classifier", "-c", type=Path, metavar="C",
                   help="classifier to check (default: settings, else the bundled one)")
    p.add_argument("--redis-url", metavar="URL", help="Redis to check (default: settings)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--backend", choices=("auto", "torch", "onnxruntime", "openvino"),
                   help="backbone runtime to check (default: settings)")
    p.add_argument("--backend-mode", choices=("float32", "bfloat16", "int8"),
                   help="its precision (default: settings)")
    p.set_defaults(func=run, device=None, dtype=None, batch_size=None)


def _model_location(ref: str) -> dict[str, Any]:
    from monitor.core.backbone import HUB_NAMES

    path = Path(ref).expanduser()
    if path.is_file():
        return {"ref": ref, "kind": "torch.hub checkpoint file", "exists": True}
    if path.is_dir():
        kind = (
            "transformers directory"
            if (path / "config.json").is_file()
            else "torch.hub cache directory"
            if list(path.glob("**/*.pth"))
            else "directory without a model"
        )
        found = kind != "directory without a model"
        broken = _damaged_weights(path) if found else []
        info: dict[str, Any] = {"ref": ref, "kind": kind, "exists": found and not broken}
        if broken:
            info["damaged"] = broken
        return info
    hub_id = HUB_NAMES.get(ref, ref)
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(hub_id, "config.json")
    except Exception:  # noqa: BLE001  (boundary: a diagnostic must report, not crash)
        cached = None
    return {
        "ref": ref,
        "kind": "hub id",
        "hub_id": hub_id,
        "cached_locally": isinstance(cached, str),
        "exists": isinstance(cached, str),
    }


def _classifier(ref: Path | None) -> dict[str, Any]:
    """Which classifier would score, and whether it loads."""
    from monitor.core.classifier import load_classifier
    from monitor.core.published import resolve_classifier_ref
    from monitor.errors import ArtifactError

    path = resolve_classifier_ref(ref)
    if path is None:
        return {"ref": "none", "note": "features only: P(AI) is null", "ok": True}
    try:
        clf = load_classifier(path)
    except ArtifactError as exc:
        return {"ref": str(path), "ok": False, "error": exc.message}
    info: dict[str, Any] = {
        "ref": str(path),
        "bundled_default": ref is None or str(ref) == "default",
        "kind": clf.kind,
        "threshold": clf.threshold,
        "threshold_mode": clf.threshold_mode,
        "zero_step_angle_deg": clf.zero_step_angle_deg,
        "backbone": clf.backbone or "unknown",
        "ok": True,
    }
    if clf.provenance:
        info["source"] = clf.provenance.get("source", "?")
        info["license"] = clf.provenance.get("license", "?")
    return info


def _damaged_weights(directory: Path) -> list[str]:
    """``name: reason`` for each .safetensors file whose header or size is inconsistent."""
    from safetensors import SafetensorError, safe_open

    damaged = []
    for file in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(file), "pt"):
                pass
        except (SafetensorError, OSError) as exc:
            damaged.append(f"{file.name}: {exc}")
    return damaged


def _backends(model: ModelSettings, model_found: bool) -> dict[str, Any]:
    """The configured backbone runtime, what it resolves to here, the installed runtimes,
    the CPU flags that matter (less what an instruction-set cap such as
    ``ONEDNN_MAX_CPU_ISA=AVX2`` forbids; the caps are listed), and every mode's measured
    drift (BENCHMARKS.md).

    ``auto`` on a CPU with the model at hand is resolved as ``score`` and ``serve`` would:
    from this machine's cached decision, or measured now (once) and cached."""
    import torch

    from monitor.core.autoselect import cpu_model, isa_caps, isa_flags
    from monitor.core.backbone import resolve_device
    from monitor.core.backends import (
        BF16_FALLBACK,
        DRIFT_BOUND,
        MEASURED_DRIFT,
        MEASURED_ON,
        choose_backend,
        installed,
        within_bounds,
    )
    from monitor.core.graphs import runtime_version
    from monitor.errors import ConfigError

    flags = isa_flags()
    info: dict[str, Any] = {"configured": f"{model.backend} {model.backend_mode}"}
    try:
        device = resolve_device(model.device)
        rt, md = choose_backend(model.backend, model.backend_mode, device, installed)
        info["runs"] = f"{rt} {md}"
        if model.backend != "auto" and md != model.backend_mode:
            info["note"] = BF16_FALLBACK
        if model.backend == "auto" and device.type == "cpu" and model.dtype == "float32":
            info.update(_auto(model, model_found))
    except ConfigError as exc:
        info["runs"] = f"error: {exc.message}"
    info["installed"] = [
        f"{r} {runtime_version(r)}" for r in ("torch", "onnxruntime", "openvino") if installed(r)
    ]
    info["cpu_model"] = cpu_model() or "unknown"
    info["cpu_flags"] = [
        f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
        if f in flags
    ]
    caps = isa_caps()
    info["isa_caps"] = [f"{k}={v}" for k, v in caps.items()]
    info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    info["measured_drift"] = [
        f"{r} {m}: drift {d:.2g}, max dP(AI) {p:.2g} "
        f"({'within' if within_bounds(r, m) else 'over'} the {DRIFT_BOUND:.0%} bound"
        f"{'' if within_bounds(r, m) else '; auto never picks it'})"
        + "".join(f"; {cpu} {v:.2g}" for cpu, v in MEASURED_ON.get((r, m), {}).items())
        for (r, m), (d, p) in MEASURED_DRIFT.items()
    ]
    return info


def _auto(m: ModelSettings, model_found: bool) -> dict[str, Any]:
    """``runs`` and ``auto`` for the auto backend: the decision and the rates behind it."""
    if not model_found:
        return {"runs": "auto: decided on first use (the model is not available here)"}
    from monitor.core.backbone import load_backbone
    from monitor.core.backends import resolve_auto

    backbone = load_backbone(m.ref, "cpu", "float32", m.image_size)
    choice = resolve_auto(backbone, m.batch_size, m.threads, m.graph_cache)
    rates = sorted(choice.frames_per_s.items(), key=lambda kv: -kv[1])
    return {
        "runs": f"{choice.runtime} {choice.mode}",
        "auto": {
            "decision": "measured now" if choice.measured else "cached",
            "file": str(choice.path),
            "frames_per_s": [f"{n} {v:.2f}" for n, v in rates] or ["only torch float32"],
            "dropped": [f"{n}: {why}" for n, why in choice.dropped.items()],
        },
    }


def _redis(url: str | None) -> dict[str, Any]:
    if not url:
        return {"configured": False}
    import redis

    from monitor.errors import ConfigError
    from monitor.redaction import redact_text, redact_url
    from monitor.redis_conn import redis_client

    try:
        client = redis_client(url, socket_connect_timeout=2, socket_timeout=2)
        client.ping()
        return {
            "configured": True,
            "url": redact_url(url),
            "reachable": True,
            "version": client.info("server").get("redis_version"),
        }
    except (redis.RedisError, OSError, ValueError, ConfigError) as exc:
        return {
            "configured": True,
            "url": redact_url(url),
            "reachable": False,
            "error": type(exc).__name__,
            "detail": redact_text(str(exc))[:500],
        }


def _print_text(value: dict[str, Any], indent: str = "") -> None:
    """Nested sections as indented ``key: value`` lines (lists joined by commas)."""
    for key, item in value.items():
        if isinstance(item, dict):
            print(f"{indent}{key}:")
            _print_text(item, indent + "  ")
        elif isinstance(item, list):
            print(f"{indent}{key}: {', '.join(map(str, item)) or '-'}")
        else:
            print(f"{indent}{key}: {item}")


def run(args: argparse.Namespace) -> int:
    """Print the report; exit 1 when the model cannot be found or Redis is unreachable."""
    import av
    import numpy
    import torch
    import transformers

    settings = settings_from_args(args)
    cuda = torch.cuda.is_available()
    report: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "av": av.__version__,
            "ffmpeg": {
                k: ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
                for k, v in av.library_versions.items()
            },
            "numpy": numpy.__version__,
        },
        "devices": {
            "cpu_threads": torch.get_num_threads(),
            "cuda_available": cuda,
            "cuda_version": torch.version.cuda,
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if cuda
            else [],
        },
        "model": _model_location(settings.model.ref),
        "classifier": _classifier(settings.classifier.path),
        "backend": None,
        "redis": _redis(
            args.redis_url
            or (settings.redis.url.get_secret_value() if settings.redis.url else None)
        ),
    }
    report["backend"] = _backends(settings.model, bool(report["model"]["exists"]))
    ok = (
        report["model"]["exists"]
        and report["classifier"]["ok"]
        and report["redis"].get("reachable", True)
    )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_text(report)
        if not report["model"]["exists"]:
            print("\nmodel not found locally: see README 'DINOv2 weights on an offline machine'")
    return EXIT_OK if ok else EXIT_SOME_FAILED
