"""Features -> P(AI-generated), and classifier artifacts that load without executing code.

Convention (SPEC section 6): the positive class (label 1) is AI-generated; the
score is P(AI). Features are z-scored with a scaler fitted on the training rows
only.

An artifact is a directory with two files:

* ``classifier.json``: kind, feature spec version, feature names, the feature
  convention (``zero_step_angle_deg``: the angle at a zero-length step, 0 per SPEC
  or 90 as the upstream code; 0 when absent), backbone id, threshold (and how it
  was chosen), training summary, provenance (where imported weights came from),
  tensor names;
* ``classifier.safetensors``: every array (scaler mean/std and weights).

Neither format can carry code, so loading an artifact never executes any.
Training each kind (and choosing its threshold) is :mod:`monitor.learn.fitting`; this
module only applies artifacts, so scoring needs neither torch nor scikit-learn here.

Kinds (each a pure numpy function of its stored arrays, registered in :data:`PROBA`):

* ``mlp``: the paper's 21-64-32-1 MLP; ``logreg``: logistic regression;
* ``gaussian_nb``: Gaussian naive Bayes (class means, variances, log priors);
* ``random_forest`` (400 trees, depth <= 6) and ``gradient_boosting`` (200 rounds,
  lr 0.1): scikit-learn's fitted trees exported as flat node arrays (left/right
  child, feature, threshold, leaf value) and traversed vectorised in numpy, with
  the inputs rounded to float32 as scikit-learn does, so predictions are identical;
* ``svm_rbf``: RBF support vectors, dual coefficients, intercept and gamma; its
  decision value is mapped to P(AI) by a logistic (Platt) calibration fitted on
  the training rows' decision values;
* ``mean_curvature`` (training-free, SPEC section 6): the score is
  ``sigmoid((theta_mean - centre) / scale)`` with ``theta_mean`` = feature 17 in
  raw degrees and ``centre``/``scale`` the mean/std of feature 17 on the real
  training rows. Monotone in the mean curvature, so its ranking (AUROC) is the
  paper's training-free rule; the threshold is set on the real rows;
* ``one_class``: learns known-real footage only. Squared Mahalanobis distance of
  the z-scored features to the real rows (Ledoit-Wolf shrunk covariance), mapped
  to [0, 1] by ``sigmoid((log d2 - m) / s)`` with m, s the mean/std of ``log d2``
  on the real training rows; P(AI) here means "unlike the known-real footage".
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from .. import FEATURE_SPEC_VERSION
from ..errors import ArtifactError
from ..types import FEATURE_NAMES, N_FEATURES, FloatArray, check_zero_step_angle

THETA_MEAN = FEATURE_NAMES.index("theta_mean")
"""Index of the mean curvature (feature 17), the training-free score."""

META_FILE = "classifier.json"
TENSOR_FILE = "classifier.safetensors"


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

    @classmethod
    def identity(cls, width: int = N_FEATURES) -> Scaler:
        """The scaler that leaves features in their raw units."""
        return cls(mean=np.zeros(width), std=np.ones(width))

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


ParamFn = Callable[[dict[str, FloatArray], FloatArray], FloatArray]

LOGITS: dict[str, ParamFn] = {
    "mlp": _mlp_logits,
    "logreg": _logreg_logits,
}
"""Kinds whose output is a logit (P(AI) = sigmoid(logit)); a subset of :data:`PROBA`."""


def _nb_proba(p: dict[str, FloatArray], x: FloatArray) -> FloatArray:
    theta, var, log_prior = p["nb.theta"], p["nb.var"], p["nb.log_prior"]
    jll = np.stack(
        [
            log_prior[c]
            - 0.5 * np.sum(np.log(2.0 * np.pi * var[c]))
            - 0.5 * np.sum((x - theta[c]) ** 2 / var[c], axis=1)
            for c in range(2)
        ],
        axis=1,
    )
    return _sigmoid(jll[:, 1] - jll[:, 0])


def forest_leaf_values(p: dict[str, FloatArray], x: FloatArray) -> FloatArray:
    """Leaf value reached by every row in every exported tree: ``(N, n_trees)``.

    All trees are traversed at once, one level per step, over blocks of rows
    small enough to stay in cache. Inputs are rounded to float32 first, as
    scikit-learn's trees compare them.
    """
    xr = x.astype(np.float32).astype(np.float64)
    left = p["forest.left"].astype(np.int32)
    right = p["forest.right"].astype(np.int32)
    feature = np.maximum(p["forest.feature"], 0).astype(np.int32)
    thresh = p["forest.threshold"]
    value = p["forest.value"]
    roots = p["forest.roots"].astype(np.int32)
    depth = int(p["forest.depth"].reshape(()))
    out = np.empty((len(xr), roots.size), dtype=np.float64)
    block = max(1, 65536 // max(roots.size, 1))
    for i in range(0, len(xr), block):
        xb = xr[i : i + block]
        node = np.repeat(roots[None, :], len(xb), axis=0)
        rows = np.arange(len(xb))[:, None]
        for _ in range(depth):
            lc = left[node]
            leaf = lc < 0
            if leaf.all():
                break
            go_left = xb[rows, feature[node]] <= thresh[node]
            node = np.where(leaf, node, np.where(go_left, lc, right[node]))
        out[i : i + block] = value[node]
    return out


def _rf_proba(p: dict[str, FloatArray], x: FloatArray) -> FloatArray:
    out: FloatArray = forest_leaf_values(p, x).mean(axis=1)
    return out


def _gb_logits(p: dict[str, FloatArray], x: FloatArray) -> FloatArray:
    raw = forest_leaf_values(p, x).sum(axis=1) * p["gb.learning_rate"].reshape(())
    out: FloatArray = raw + p["gb.init"].reshape(())
    return out


def svm_decision(p: dict[str, FloatArray], x: FloatArray) -> FloatArray:
    """The RBF SVM's decision value for each scaled row (before Platt scaling)."""
    sv, coef = p["svm.support_vectors"], p["svm.dual_coef"].reshape(-1)
    gamma = p["svm.gamma"].reshape(())
    out = np.empty(len(x), dtype=np.float64)
    sv_sq = np.einsum("ij,ij->i", sv, sv)
    for i in range(0, len(x), 4096):  # bounds the (rows, support vectors) temporary
        xb = x[i : i + 4096]
        d2 = np.einsum("ij,ij->i", xb, xb)[:, None] + sv_sq[None, :] - 2.0 * (xb @ sv.T)
        out[i : i + 4096] = np.exp(-gamma * np.maximum(d2, 0.0)) @ coef
    res: FloatArray = out + p["svm.intercept"].reshape(())
    return res


def _svm_logits(p: dict[str, FloatArray], x: FloatArray) -> FloatArray:
    out: FloatArray = p["svm.platt_a"].reshape(()) * svm_decision(p, x) + p[
        "svm.platt_b"
    ].reshape(())
    return out


def _curvature_logits(p: dict[str, FloatArray], x: FloatArray) -> FloatArray:
    out: FloatArray = (x[:, THETA_MEAN] - p["centre"].reshape(())) / p["scale"].reshape(())
    return out


def mahalanobis_sq(p: dict[str, FloatArray], x: FloatArray) -> FloatArray:
    """Squared Mahalanobis distance of (z-scored) rows to the one-class model's real rows."""
    diff = x - p["oc.loc"]
    out: FloatArray = np.einsum("ij,jk,ik->i", diff, p["oc.precision"], diff)
    return out


def _one_class_logits(p: dict[str, FloatArray], x: FloatArray) -> FloatArray:
    log_d2 = np.log(np.maximum(mahalanobis_sq(p, x), 1e-300))
    out: FloatArray = (log_d2 - p["oc.log_d2_mean"].reshape(())) / p["oc.log_d2_std"].reshape(())
    return out


def _from_logits(fn: ParamFn) -> ParamFn:
    def proba(p: dict[str, FloatArray], x: FloatArray) -> FloatArray:
        return _sigmoid(fn(p, x))

    return proba


PROBA: dict[str, ParamFn] = {
    "mlp": _from_logits(_mlp_logits),
    "logreg": _from_logits(_logreg_logits),
    "gaussian_nb": _nb_proba,
    "random_forest": _rf_proba,
    "gradient_boosting": _from_logits(_gb_logits),
    "svm_rbf": _from_logits(_svm_logits),
    "mean_curvature": _from_logits(_curvature_logits),
    "one_class": _from_logits(_one_class_logits),
}
"""Every kind an artifact may name: P(AI) as a pure function of its stored arrays
and the scaled ``(N, 21)`` features."""

_FOREST = ("forest.left", "forest.right", "forest.feature", "forest.threshold",
           "forest.value", "forest.roots", "forest.depth")
REQUIRED_PARAMS: dict[str, tuple[str, ...]] = {
    "mlp": ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"),
    "logreg": ("coef", "intercept"),
    "gaussian_nb": ("nb.theta", "nb.var", "nb.log_prior"),
    "random_forest": _FOREST,
    "gradient_boosting": (*_FOREST, "gb.init", "gb.learning_rate"),
    "svm_rbf": ("svm.support_vectors", "svm.dual_coef", "svm.intercept", "svm.gamma",
                "svm.platt_a", "svm.platt_b"),
    "mean_curvature": ("centre", "scale"),
    "one_class": ("oc.loc", "oc.precision", "oc.log_d2_mean", "oc.log_d2_std"),
}
"""The arrays each kind's artifact must hold (checked when loading)."""

KINDS: tuple[str, ...] = tuple(PROBA)
SUPERVISED_KINDS: tuple[str, ...] = (
    "mlp",
    "logreg",
    "gaussian_nb",
    "random_forest",
    "gradient_boosting",
    "svm_rbf",
)
"""Kinds that need both classes to train; the others learn from real rows only."""
TRAINING_FREE_KINDS: tuple[str, ...] = ("mean_curvature", "one_class")


@dataclass
class Classifier:
    """A trained classifier: scaler + parameters + decision threshold (implements
    ``WindowClassifier``). ``predict_proba`` is numpy only (float64).

    ``zero_step_angle_deg`` is the feature convention its inputs must be computed in
    (0: SPEC, 90: the upstream code); ``provenance`` says where imported weights came
    from (source, licence, SHA-256 of each input file), empty for classifiers trained here.
    """

    kind: str
    scaler: Scaler
    params: dict[str, FloatArray]
    threshold: float = 0.5
    threshold_mode: str = "fixed"
    backbone: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    zero_step_angle_deg: float = 0.0
    provenance: dict[str, Any] = field(default_factory=dict)

    def predict_proba(self, features: npt.ArrayLike) -> FloatArray:
        """P(AI) for each row of an ``(N, 21)`` array (a single row is accepted)."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim == 1:
            x = x[None, :]
        width = int(self.scaler.mean.shape[0])
        if x.shape[1] != width:
            raise ValueError(f"expected {width} features per row, got {x.shape[1]}")
        return PROBA[self.kind](self.params, self.scaler.transform(x))

    def backbone_mismatches(self, options: dict[str, Any]) -> list[str]:
        """How ``options`` (the embedder's ``image_size``, ``normalize``, ``dtype``, ...)
        differ from the ``backbone_options`` recorded at training, one line each.

        Options the artifact did not record, and options given as None (unknown),
        are not compared; empty when all match.
        """
        recorded = self.summary.get("backbone_options") or {}
        return [
            f"{k}: trained with {recorded[k]!r}, now {options[k]!r}"
            for k in sorted(recorded)
            if options.get(k) is not None and options[k] != recorded[k]
        ]

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
            "zero_step_angle_deg": self.zero_step_angle_deg,
            "positive_class": "ai-generated",
            "backbone": self.backbone,
            "threshold": self.threshold,
            "threshold_mode": self.threshold_mode,
            "params": sorted(self.params),
            "summary": self.summary,
        }
        if self.provenance:
            meta["provenance"] = self.provenance
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
    if kind not in PROBA:
        raise ArtifactError(f"{directory}: unknown classifier kind {kind!r}")
    missing = [k for k in REQUIRED_PARAMS[str(kind)] if f"param.{k}" not in tensors]
    if missing:
        raise ArtifactError(f"{directory}: {kind} artifact lacks arrays {missing}")
    try:
        params = {k: tensors[f"param.{k}"] for k in meta["params"]}
        scaler = Scaler(mean=tensors["scaler.mean"], std=tensors["scaler.std"])
    except KeyError as exc:
        raise ArtifactError(f"{directory}: artifact lacks tensor {exc}") from exc
    try:
        angle = check_zero_step_angle(meta.get("zero_step_angle_deg", 0.0))
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"{directory}: {exc}") from None
    return Classifier(
        kind=str(kind),
        scaler=scaler,
        params=params,
        threshold=float(meta.get("threshold", 0.5)),
        threshold_mode=str(meta.get("threshold_mode", "fixed")),
        backbone=str(meta.get("backbone", "")),
        summary=dict(meta.get("summary", {})),
        zero_step_angle_deg=angle,
        provenance=dict(meta.get("provenance", {})),
    )
