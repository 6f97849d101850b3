"""Helpers shared by the subcommands: settings from flags, model and classifier building,
logging, progress bars."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from monitor.config import MODEL_DTYPES, Settings, load_settings
from monitor.errors import ConfigError
from monitor.media.decode import DecodeLimits

if TYPE_CHECKING:  # torch loads with these: imported where a model is built
    from monitor.core.classifier import Classifier
    from monitor.core.embed import Embedder

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3


def exit_now(status: int) -> NoReturn:
    """End the process with ``status`` at once, without the interpreter's teardown.

    For a thread still inside a backbone forward pass when a drain's deadline passed
    (serve's device worker, a queue worker's job): at interpreter exit Python ends a
    daemon thread that comes back for the GIL with ``pthread_exit``, whose unwinding
    through torch's (or a runtime's) C++ frames calls ``std::terminate``: SIGABRT,
    "terminate called without an active exception", instead of the documented status.
    Logs and standard streams are flushed first; the caller has closed everything
    else it owns."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(status)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (``--hop 0`` is a usage error, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def check_port_free(host: str, port: int) -> None:
    """Raise ConfigError when ``host:port`` cannot be bound (checked before a slow model load)."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port} ({exc.strerror}): another process holds the "
                "port; stop it or pass --port"
            ) from None


def add_settings_args(p: argparse.ArgumentParser) -> None:
    """Flags shared by every subcommand that loads a model."""
    g = p.add_argument_group("model and settings")
    g.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="YAML settings file (environment RESTRAV_* overrides it, flags override both)",
    )
    g.add_argument(
        "--model",
        "-m",
        metavar="M",
        help="DINOv2: Hugging Face id, torch.hub name (dinov2_vits14), local "
        "transformers directory, or torch.hub checkpoint .pth / its directory "
        "(default: facebook/dinov2-small)",
    )
    g.add_argument(
        "--classifier",
        "-c",
        type=Path,
        metavar="C",
        help="classifier artifact directory (from `restrav train` or `restrav "
        "import-classifier`); default: the bundled published classifier "
        "(restrav-vidprom-mlp); 'none': features only, the score is null",
    )
    g.add_argument("--device", "-d", metavar="D", help="auto (default), cpu, cuda, cuda:N")
    g.add_argument(
        "--dtype",
        choices=MODEL_DTYPES,
        help="model precision (default float32; geometry is float64 regardless; "
        "see BENCHMARKS.md for each one's speed and feature drift)",
    )
    g.add_argument(
        "--batch-size", type=int, metavar="N", help="frames per forward pass (default 8)"
    )
    g.add_argument(
        "--backend",
        choices=("auto", "torch", "onnxruntime", "openvino"),
        help="backbone runtime (default torch; onnxruntime/openvino need "
        "pip install 'restrav-monitor[cpu-fast]'; auto: the fastest installed one whose "
        "features stay within 1 %%, torch on CUDA)",
    )
    g.add_argument(
        "--backend-mode",
        choices=("float32", "bfloat16", "int8"),
        help="a runtime backend's precision (default float32; reduced modes move the "
        "features: see BENCHMARKS.md)",
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Merge the YAML file, the environment and the flags into one Settings."""
    model: dict[str, Any] = {}
    for flag, key in (
        ("model", "ref"),
        ("device", "device"),
        ("dtype", "dtype"),
        ("batch_size", "batch_size"),
        ("backend", "backend"),
        ("backend_mode", "backend_mode"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            model[key] = value
    overrides: dict[str, Any] = {}
    if model:
        overrides["model"] = model
    if getattr(args, "classifier", None) is not None:
        overrides["classifier"] = {"path": args.classifier}
    return load_settings(getattr(args, "config", None), **overrides)


def decode_limits(settings: Settings) -> DecodeLimits:
    """DecodeLimits from the decode section."""
    d = settings.decode
    return DecodeLimits(
        open_timeout_s=d.open_timeout_s,
        read_timeout_s=d.read_timeout_s,
        max_file_bytes=d.max_file_bytes,
        max_duration_s=d.max_duration_s,
        max_pixels=d.max_pixels,
        threads=d.threads,
        max_frames=d.max_frames,
        allowed_formats=tuple(d.allowed_formats),
    )


def build_embedder(settings: Settings) -> Embedder:
    """Load the backbone named by the settings and wrap it in an Embedder on the chosen
    backend (:func:`monitor.core.backends.make_embedder`, the one place that chooses).

    With a runtime backend (OpenVINO, ONNX Runtime: the CPU) this process's torch is
    then set to one intra-op thread: the runtime computes the backbone on its own
    threads, and torch only prepares pixels (one frame per thread, in parallel, see
    :mod:`monitor.core.resize`) and the geometry, where a team of two threads per small
    operation cost more CPU than it saved (BENCHMARKS.md, issue 22 fourth part)."""
    import torch

    from monitor.core.backends import make_embedder

    m = settings.model
    emb = make_embedder(
        m.ref, m.device, m.dtype, m.image_size, batch_size=m.batch_size,
        normalize=m.normalize, compile=m.compile, backend=m.backend, mode=m.backend_mode,
        threads=m.threads, cache_dir=m.graph_cache,
    )
    if emb.runner is not None:
        torch.set_num_threads(1)
    return emb


def build_classifier(settings: Settings, embedding_dim: int | None = None) -> Classifier | None:
    """Load the configured classifier: the bundled default when none is set, None for
    ``none`` (features only).

    An artifact that recorded the embedder it was trained on (``restrav train``,
    ``save_pipeline``, the imported default) and differs from this run's (backbone,
    embedding width ``embedding_dim`` when given, image size, normalisation, dtype)
    is still loaded, with one WARNING naming each difference: its scores were
    calibrated on other features."""
    from monitor.core.classifier import load_classifier
    from monitor.core.published import resolve_classifier_ref

    path = resolve_classifier_ref(settings.classifier.path)
    if path is None:
        return None
    clf = load_classifier(path)
    diffs = embedder_mismatches(clf, settings, embedding_dim)
    if diffs:
        logging.getLogger("restrav").warning(
            "classifier %s was trained on other embedder settings (%s): its scores are "
            "not calibrated for this run's features; use the same model settings",
            path, "; ".join(diffs),
        )
    return clf


def embedder_mismatches(
    clf: Classifier, settings: Settings, embedding_dim: int | None = None
) -> list[str]:
    """How this run's model settings differ from what ``clf`` recorded, one line each.

    Backbones are compared by name, a torch.hub name equal to its Hugging Face id
    (``dinov2_vits14`` is ``facebook/dinov2-small``); a local model directory or file
    cannot be named, so its embedding width stands for it when ``embedding_dim`` is given.
    """
    from monitor.core.backbone import same_backbone

    m = settings.model
    diffs = clf.backbone_mismatches(
        {"image_size": m.image_size, "normalize": m.normalize, "dtype": m.dtype,
         "embedding_dim": embedding_dim}
    )
    local = Path(m.ref).expanduser().exists()
    if clf.backbone and not local and not same_backbone(clf.backbone, m.ref):
        diffs.insert(0, f"backbone: trained with {clf.backbone!r}, now {m.ref!r}")
    return diffs


def setup_logging(verbose: int) -> None:
    """Log to stderr; -v for INFO, -vv for DEBUG."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def progress_enabled(flag: bool | None) -> bool:
    """Progress bars by default only when stderr is a terminal."""
    return sys.stderr.isatty() if flag is None else flag
