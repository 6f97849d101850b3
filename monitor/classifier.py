"""Features -> P(AI-generated), and classifier artifacts that load without executing code.

Convention (SPEC section 6): the positive class (label 1) is AI-generated; the
score is P(AI). Features are z-scored with a scaler fitted on the training rows
only.

An artifact is a directory with two files:

* ``classifier.json``: kind, feature spec version, feature names, backbone id,
  threshold (and how it was chosen), training summary, tensor names;
* ``classifier.safetensors``: every array (scaler mean/std and weights).

Neither format can carry code, so loading an artifact never executes any.
Kinds: ``mlp`` (the paper's 21-64-32-1 MLP) and ``logreg`` (logistic regression).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from . import FEATURE_SPEC_VERSION
from .errors import ArtifactError
from .types import FEATURE_NAMES, N_FEATURES, FloatArray

META_FILE = "classifier.json"
TENSOR_FILE = "classifier.safetensors"
ThresholdMode = Literal["fpr", "f1"]


@dataclass(frozen=True)
class Scaler:
    """Per-feature z-score: (x - mean) / std, std floored to avoid division by zero."""

    mean: FloatArray
    std: FloatArray

    @classmethod
    def fit(cls, x: npt.ArrayLike) -> Scaler:
        """Fit on the training rows only."""
        a = np.asarray(x, dtype=np.float64)
        std = a.std(axis=0)
        return cls(mean=a.mean(axis=0), std=np.where(std > 1e-12, std, 1.0))

    def transform(self, x: npt.ArrayLike) -> FloatArray:
        """Standardise rows."""
        out: FloatArray = (np.asarray(x, dtype=np.float64) - self.mean) / self.std
        return out


def _sigmoid(x: FloatArray) -> FloatArray:
    out: FloatArray = 0.5 * (1.0 + np.tanh(0.5 * x))
    return out


def _mlp_logits(p: dict[str, FloatArray], x: FloatArray) -> FloatArray:
    h = np.maximum(x @ p["fc1.weight"].T + p["fc1.bias"], 0.0)
    h = np.maximum(h @ p["fc2.weight"].T + p["fc2.bias"], 0.0)
    out: FloatArray = (h @ p["fc3.weight"].T + p["fc3.bias"]).reshape(-1)
    return out


def _logreg_logits(p: dict[str, FloatArray], x: FloatArray) -> FloatArray:
    out: FloatArray = (x @ p["coef"].reshape(-1) + p["intercept"].reshape(())).reshape(-1)
    return out


LOGITS: dict[str, Callable[[dict[str, FloatArray], FloatArray], FloatArray]] = {
    "mlp": _mlp_logits,
    "logreg": _logreg_logits,
}
"""Kinds an artifact may name, each a pure function of its stored arrays."""


@dataclass
class Classifier:
    """A trained classifier: scaler + parameters + decision threshold (implements
    ``WindowClassifier``). ``predict_proba`` is numpy only (float64)."""

    kind: str
    scaler: Scaler
    params: dict[str, FloatArray]
    threshold: float = 0.5
    threshold_mode: str = "fixed"
    backbone: str = ""
    summary: dict[str, Any] = field(default_factory=dict)

    def predict_proba(self, features: npt.ArrayLike) -> FloatArray:
        """P(AI) for each row of an ``(N, 21)`` array (a single row is accepted)."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim == 1:
            x = x[None, :]
        if x.shape[1] != N_FEATURES:
            raise ValueError(f"expected {N_FEATURES} features per row, got {x.shape[1]}")
        return _sigmoid(LOGITS[self.kind](self.params, self.scaler.transform(x)))

    def save(self, directory: Path) -> None:
        """Write ``classifier.json`` and ``classifier.safetensors`` into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {"scaler.mean": self.scaler.mean, "scaler.std": self.scaler.std}
        tensors.update({f"param.{k}": np.ascontiguousarray(v) for k, v in self.params.items()})
        save_file(
            {k: np.asarray(v, dtype=np.float64) for k, v in tensors.items()},
            str(directory / TENSOR_FILE),
        )
        meta = {
            "kind": self.kind,
            "feature_spec": FEATURE_SPEC_VERSION,
            "feature_names": list(FEATURE_NAMES),
            "positive_class": "ai-generated",
            "backbone": self.backbone,
            "threshold": self.threshold,
            "threshold_mode": self.threshold_mode,
            "params": sorted(self.params),
            "summary": self.summary,
        }
        (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def load_classifier(directory: Path) -> Classifier:
    """Load an artifact directory (or its ``classifier.json``); never executes code."""
    directory = Path(directory)
    if directory.is_file() and directory.name == META_FILE:
        directory = directory.parent
    meta_path, tensor_path = directory / META_FILE, directory / TENSOR_FILE
    if not meta_path.is_file() or not tensor_path.is_file():
        raise ArtifactError(
            f"{directory}: not a classifier artifact (needs {META_FILE} and {TENSOR_FILE}); "
            "train one with `restrav train`"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        tensors = load_file(str(tensor_path))
    except (OSError, ValueError, SafetensorError) as exc:
        raise ArtifactError(f"{directory}: unreadable artifact: {exc}") from exc
    if meta.get("feature_spec") != FEATURE_SPEC_VERSION:
        raise ArtifactError(
            f"{directory}: feature spec {meta.get('feature_spec')!r} != {FEATURE_SPEC_VERSION!r}; "
            "retrain on features from this version"
        )
    kind = meta.get("kind")
    if kind not in LOGITS:
        raise ArtifactError(f"{directory}: unknown classifier kind {kind!r}")
    try:
        params = {k: tensors[f"param.{k}"] for k in meta["params"]}
        scaler = Scaler(mean=tensors["scaler.mean"], std=tensors["scaler.std"])
    except KeyError as exc:
        raise ArtifactError(f"{directory}: artifact lacks tensor {exc}") from exc
    return Classifier(
        kind=str(kind),
        scaler=scaler,
        params=params,
        threshold=float(meta.get("threshold", 0.5)),
        threshold_mode=str(meta.get("threshold_mode", "fixed")),
        backbone=str(meta.get("backbone", "")),
        summary=dict(meta.get("summary", {})),
    )


def threshold_for_fpr(scores_real: npt.ArrayLike, target_fpr: float) -> float:
    """Smallest threshold whose false-positive rate on real rows is <= ``target_fpr``
    (decision: P(AI) >= threshold)."""
    s = np.sort(np.asarray(scores_real, dtype=np.float64))
    if s.size == 0:
        raise ValueError("no real rows to set a false-positive-rate threshold on")
    allowed = int(np.floor(target_fpr * s.size))
    if allowed <= 0:
        return float(np.nextafter(s[-1], np.inf))
    # keep at most `allowed` real scores at or above the threshold
    return float(np.nextafter(s[-allowed - 1], np.inf))


def threshold_max_f1(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """The threshold that maximises F1 on (scores, labels), the paper's choice."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    best_t, best_f1 = 0.5, -1.0
    for t in np.unique(s):
        pred = s >= t
        tp = float(np.sum(pred & y))
        fp = float(np.sum(pred & ~y))
        fn = float(np.sum(~pred & y))
        f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
        if f1 > best_f1:
            best_t, best_f1 = float(t), f1
    return best_t


def _fit_mlp(
    x: FloatArray, y: FloatArray, epochs: int, lr: float, batch: int, seed: int
) -> dict[str, FloatArray]:
    gen = torch.Generator().manual_seed(seed)
    torch_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(N_FEATURES, 64),
        torch.nn.ReLU(),
        torch.nn.Linear(64, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 1),
    ).double()
    torch.random.set_rng_state(torch_state)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).double()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), batch):
            idx = perm[i : i + batch]
            opt.zero_grad()
            loss = loss_fn(net(xt[idx]).reshape(-1), yt[idx])
            loss.backward()
            opt.step()
    names = {"0": "fc1", "2": "fc2", "4": "fc3"}
    return {
        f"{names[k.split('.')[0]]}.{k.split('.')[1]}": v.detach().numpy().copy()
        for k, v in net.state_dict().items()
    }


def _fit_logreg(x: FloatArray, y: FloatArray, seed: int) -> dict[str, FloatArray]:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=1000, random_state=seed).fit(x, y)
    return {
        "coef": model.coef_.astype(np.float64),
        "intercept": model.intercept_.astype(np.float64),
    }


def fit_classifier(
    features: npt.ArrayLike,
    labels: npt.ArrayLike,
    kind: str = "mlp",
    threshold_mode: ThresholdMode = "fpr",
    target_fpr: float = 0.01,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 32,
    seed: int = 0,
    backbone: str = "",
) -> Classifier:
    """Train on the given (training) rows only: scaler, model and threshold.

    ``labels``: 1 = AI-generated, 0 = real. ``threshold_mode="fpr"`` sets the
    threshold for ``target_fpr`` on the real training rows (the default for
    operators); ``"f1"`` maximises F1 on the training rows (the paper).
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if x.ndim != 2 or x.shape[1] != N_FEATURES or len(x) != len(y):
        raise ValueError(f"need (N, {N_FEATURES}) features and N labels, got {x.shape}, {y.shape}")
    if not set(np.unique(y)) <= {0.0, 1.0} or len(np.unique(y)) < 2:
        raise ValueError("labels must contain both classes, 0 (real) and 1 (AI-generated)")
    scaler = Scaler.fit(x)
    xs = scaler.transform(x)
    if kind == "mlp":
        params = _fit_mlp(xs, y, epochs, lr, batch_size, seed)
    elif kind == "logreg":
        params = _fit_logreg(xs, y, seed)
    else:
        raise ValueError(f"unknown classifier kind {kind!r}; use mlp or logreg")
    clf = Classifier(kind=kind, scaler=scaler, params=params, backbone=backbone)
    p = clf.predict_proba(x)
    if threshold_mode == "fpr":
        clf.threshold = threshold_for_fpr(p[y == 0], target_fpr)
        clf.threshold_mode = f"fpr<={target_fpr}"
    else:
        clf.threshold = threshold_max_f1(p, y)
        clf.threshold_mode = "max-f1"
    clf.summary = {
        "rows": len(y),
        "ai_rows": int(y.sum()),
        "real_rows": int((1 - y).sum()),
        "train_accuracy": float(np.mean((p >= clf.threshold) == (y == 1))),
        "epochs": epochs if kind == "mlp" else None,
        "seed": seed,
    }
    return clf
