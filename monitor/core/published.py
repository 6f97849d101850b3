"""The published ReStraV classifier: importing the upstream layout, and the bundled default.

Upstream layout (``sampagon/ReStraV``, the code the paper's official repository now
carries): a directory with

* ``model.pt`` - a PyTorch ``state_dict`` of ``MLP(21 -> 64 -> ReLU -> 32 -> ReLU -> 1)``,
  keys ``net.0.*``, ``net.2.*``, ``net.4.*``; its sigmoid output is P(**real**);
* ``mean.npy``, ``std.npy`` - the z-score of the 21 features, shape ``(1, 21)``
  (``std`` already holds its ``+1e-8``);
* ``best_tau.npy`` - the threshold of the rule ``real if P(real) >= tau``;
* optionally ``SHA256SUMS`` (checked when present) and ``LICENSE``.

:func:`import_upstream` turns it into the project's artifact (a
:class:`~monitor.core.classifier.Classifier`: JSON + safetensors, no pickle) with the
same decisions in the project's convention: P(AI) = 1 - P(real) (the last layer's
weight and bias negated, so ``sigmoid(-logit)``), and the threshold on P(AI) the
smallest float above ``1 - tau`` (``P(AI) >= thr`` exactly when ``P(real) < tau``).
Its features are in the upstream convention (90 degrees at a zero-length step),
which the artifact records so that every scoring path computes them that way.

Loading never executes code: ``torch.load(weights_only=True, map_location="cpu")``
and ``np.load(allow_pickle=False)``. Every check failure is an
:class:`~monitor.errors.ArtifactError` naming the file and what is wrong with it.

The bundled default (:data:`DEFAULT_CLASSIFIER`, in ``monitor/classifiers/``) is the
upstream ``restrav-vidprom-mlp`` converted this way; :func:`resolve_classifier_ref`
maps the configuration's ``classifier.path`` (unset, ``default``, ``none`` or a
directory) to what scores.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..errors import ArtifactError
from ..types import N_FEATURES, NO_CLASSIFIER, FloatArray
from .classifier import Classifier, Scaler

DEFAULT_CLASSIFIER = "restrav-vidprom-mlp"
"""Name of the bundled classifier used when none is configured."""
DEFAULT_REF = "default"
"""The ``classifier.path`` that names the bundled classifier explicitly."""

UPSTREAM_FILES = ("model.pt", "mean.npy", "std.npy", "best_tau.npy")
"""The files an upstream directory must hold."""
UPSTREAM_ZERO_STEP_ANGLE_DEG = 90.0
"""The upstream code's angle next to a zero-length step (its cosine similarity is 0)."""
UPSTREAM_BACKBONE = "dinov2_vits14"
UPSTREAM_EMBEDDING_DIM = 257 * 384
"""CLS + 16 x 16 patch tokens of ViT-S/14 at 224 px, 384 wide (SPEC section 3)."""
UPSTREAM_LAYERS: dict[str, tuple[int, ...]] = {
    "net.0.weight": (64, N_FEATURES),
    "net.0.bias": (64,),
    "net.2.weight": (32, 64),
    "net.2.bias": (32,),
    "net.4.weight": (1, 32),
    "net.4.bias": (1,),
}
"""The upstream MLP's state_dict keys and shapes (21 -> 64 -> 32 -> 1)."""
_LAYER_NAMES = {"net.0": "fc1", "net.2": "fc2", "net.4": "fc3"}
MAX_UPSTREAM_FILE_BYTES = 64 * 1024**2
"""Bound on each upstream file read (the real ones are under 20 kB)."""


def classifiers_root() -> Path:
    """The directory of the classifiers shipped inside the package."""
    return Path(__file__).resolve().parent / "classifiers"


def bundled_classifier_dir(name: str = DEFAULT_CLASSIFIER) -> Path:
    """The artifact directory of a bundled classifier."""
    return classifiers_root() / name


def resolve_classifier_ref(ref: str | Path | None) -> Path | None:
    """What ``classifier.path`` names: unset or ``default`` -> the bundled default,
    ``none`` -> None (features only), anything else -> that artifact directory."""
    if ref is None or str(ref) in ("", DEFAULT_REF):
        return bundled_classifier_dir()
    if str(ref) == NO_CLASSIFIER:
        return None
    return Path(ref)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _require_file(src: Path, name: str) -> Path:
    path = src / name
    if not path.is_file():
        raise ArtifactError(
            f"{src}: missing {name} (an upstream ReStraV classifier directory holds "
            f"{', '.join(UPSTREAM_FILES)})"
        )
    size = path.stat().st_size
    if size > MAX_UPSTREAM_FILE_BYTES:
        raise ArtifactError(
            f"{path}: {size} bytes is far too large for this file "
            f"(limit {MAX_UPSTREAM_FILE_BYTES}); is it the right directory?"
        )
    return path


def _check_sums(src: Path) -> dict[str, str]:
    """Hash every upstream file; compare with ``SHA256SUMS`` where it lists them."""
    sums = {name: sha256_file(src / name) for name in UPSTREAM_FILES}
    listing = src / "SHA256SUMS"
    if listing.is_file():
        for line in listing.read_text(encoding="utf-8", errors="replace").splitlines():
            parts = line.split()
            if len(parts) != 2:
                continue
            want, name = parts[0].lower(), parts[1].lstrip("*")
            if name in sums and sums[name] != want:
                raise ArtifactError(
                    f"{src / name}: SHA-256 {sums[name][:16]}... does not match SHA256SUMS "
                    f"({want[:16]}...): the file was changed or damaged; fetch it again"
                )
    return sums


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's own message suggests weights_only=False: never pass that on
        if "Weights only load failed" in str(exc):
            raise ArtifactError(
                f"{path}: not a plain PyTorch state_dict: it is a pickle that needs code "
                "to load, which is refused (save it with torch.save(model.state_dict()))"
            ) from None
        raise ArtifactError(
            f"{path}: not a readable PyTorch file (expected torch.save(model.state_dict()) "
            "of the upstream MLP)"
        ) from None
    # parser boundary: torch's restricted unpickler fed arbitrary bytes raises whatever
    # its opcodes hit (KeyError, IndexError, struct.error...); each means "not a model"
    except Exception as exc:  # noqa: BLE001
        raise ArtifactError(
            f"{path}: not a readable PyTorch file ({type(exc).__name__}); "
            "expected torch.save(model.state_dict()) of the upstream MLP"
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ArtifactError(
            f"{path}: holds a {type(state).__name__}, not a state_dict of named tensors"
        )
    missing = sorted(set(UPSTREAM_LAYERS) - set(state))
    extra = sorted(set(state) - set(UPSTREAM_LAYERS))
    if missing or extra:
        raise ArtifactError(
            f"{path}: not the upstream MLP 21 -> 64 -> 32 -> 1 "
            f"(missing keys {missing or '-'}, unexpected keys {extra or '-'})"
        )
    for key, want in UPSTREAM_LAYERS.items():
        t = state[key]
        if tuple(t.shape) != want:
            raise ArtifactError(
                f"{path}: {key} has shape {tuple(t.shape)}, expected {want} "
                "(the upstream MLP is 21 -> 64 -> 32 -> 1)"
            )
        if not t.is_floating_point():
            raise ArtifactError(f"{path}: {key} holds {t.dtype}, not floating-point weights")
        if not bool(torch.isfinite(t).all()):
            raise ArtifactError(f"{path}: {key} holds NaN or infinite weights")
    return state


def _load_array(path: Path, allowed: tuple[tuple[int, ...], ...]) -> FloatArray:
    try:
        a = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "Object arrays" in str(exc):
            raise ArtifactError(
                f"{path}: an object array that needs pickle to load, which is refused; "
                "save it with np.save of a float array"
            ) from None
        raise ArtifactError(f"{path}: not a .npy array file (save it with np.save)") from None
    except (OSError, EOFError) as exc:
        raise ArtifactError(f"{path}: not a readable .npy file ({exc})") from None
    if not isinstance(a, np.ndarray) or a.dtype.kind not in "fiu":
        raise ArtifactError(f"{path}: expected a numeric .npy array")
    if a.shape not in allowed:
        raise ArtifactError(
            f"{path}: shape {a.shape}, expected {' or '.join(map(str, allowed))}"
        )
    out = np.asarray(a, dtype=np.float64)
    if not np.isfinite(out).all():
        raise ArtifactError(f"{path}: holds NaN or infinite values")
    return out


def _license_name(src: Path) -> str | None:
    text_path = src / "LICENSE"
    if not text_path.is_file():
        return None
    text = text_path.read_text(encoding="utf-8", errors="replace")[:4000]
    if "Apache License" in text and "Version 2.0" in text:
        return "Apache-2.0"
    if "MIT License" in text or "Permission is hereby granted, free of charge" in text:
        return "MIT"
    return "see LICENSE"


def threshold_from_upstream(tau: float) -> float:
    """The threshold on P(AI) with the decisions of upstream's ``real if P(real) >= tau``:
    the smallest float above ``1 - tau`` (AI exactly when ``P(AI) > 1 - tau``)."""
    return float(np.nextafter(1.0 - tau, np.inf))


def import_upstream(
    src: Path, source: str | None = None, license_name: str | None = None
) -> Classifier:
    """Read and check an upstream directory (see the module docstring); return the
    classifier in the project's convention, with its provenance recorded.

    ``source`` describes where the files came from (default: the directory);
    ``license_name`` overrides the licence read from ``LICENSE``.
    Raises :class:`ArtifactError` naming the file and the problem.
    """
    src = Path(src)
    if not src.is_dir():
        raise ArtifactError(f"{src}: not a directory (give the folder holding model.pt)")
    paths = {name: _require_file(src, name) for name in UPSTREAM_FILES}
    sums = _check_sums(src)
    state = _load_state_dict(paths["model.pt"])
    mean = _load_array(paths["mean.npy"], ((1, N_FEATURES), (N_FEATURES,))).reshape(-1)
    std = _load_array(paths["std.npy"], ((1, N_FEATURES), (N_FEATURES,))).reshape(-1)
    if (std <= 0).any():
        raise ArtifactError(f"{paths['std.npy']}: standard deviations must be > 0")
    tau = float(_load_array(paths["best_tau.npy"], ((), (1,))).reshape(()))
    if not 0.0 < tau < 1.0:
        raise ArtifactError(f"{paths['best_tau.npy']}: threshold {tau} is not in (0, 1)")
    params: dict[str, FloatArray] = {}
    for key, t in state.items():
        layer, part = key.rsplit(".", 1)
        params[f"{_LAYER_NAMES[layer]}.{part}"] = t.detach().to(torch.float64).numpy().copy()
    # upstream's logit is for "real": negate the last layer so sigmoid gives P(AI)
    params["fc3.weight"] = -params["fc3.weight"]
    params["fc3.bias"] = -params["fc3.bias"]
    provenance: dict[str, Any] = {
        "source": source or str(src.resolve()),
        "license": license_name or _license_name(src) or "unknown",
        "sha256": sums,
        "converted_by": f"restrav import-classifier {__version__}",
        "conversion": (
            "upstream labels 1 = real: P(AI) = 1 - sigmoid(logit), done by negating the "
            "last layer; upstream rule 'real if P(real) >= tau' becomes "
            "'AI if P(AI) >= nextafter(1 - tau)'"
        ),
        "upstream_threshold_p_real": tau,
    }
    return Classifier(
        kind="mlp",
        scaler=Scaler(mean=mean, std=std),
        params=params,
        threshold=threshold_from_upstream(tau),
        threshold_mode="upstream-max-f1-real",
        backbone=UPSTREAM_BACKBONE,
        summary={
            "backbone_options": {
                "image_size": 224,
                "normalize": "none",
                "dtype": "float32",
                "embedding_dim": UPSTREAM_EMBEDDING_DIM,
            },
            "training_data": (
                "real: Video Similarity Challenge reference set; AI-generated: VidProM "
                "examples of Pika, VideoCrafter2, Text2Video-Zero and ModelScope "
                "(upstream scripts); no accuracy figure is published with the weights"
            ),
        },
        zero_step_angle_deg=UPSTREAM_ZERO_STEP_ANGLE_DEG,
        provenance=provenance,
    )


def notice_text(clf: Classifier) -> str:
    """The NOTICE written beside a converted artifact: origin, licence, conversion."""
    p = clf.provenance
    sums = "\n".join(f"  {v}  {k}" for k, v in sorted(p.get("sha256", {}).items()))
    return (
        "This classifier is a conversion of third-party files.\n\n"
        f"Source: {p.get('source', '?')}\n"
        f"Licence: {p.get('license', '?')} (the licence text is in LICENSE beside this file)\n"
        f"Input files (SHA-256):\n{sums}\n\n"
        "Converted by restrav-monitor (`restrav import-classifier`) into its artifact format\n"
        "(classifier.json + classifier.safetensors): the weights and the feature z-score are\n"
        "unchanged in value; the last layer is negated so that the output is P(AI-generated)\n"
        "(upstream: P(real)), and the threshold is restated on P(AI) with the same decisions.\n"
    )
