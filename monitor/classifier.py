"""Features -> P(AI-generated), and classifier artifacts that load without executing code.

Convention (SPEC section 6): the positive class (label 1) is AI-generated; the
score is P(AI). Features are z-scored with a scaler fitted on the training rows
only.

An artifact is a directory with two files:

* ``classifier.json``: kind, feature spec version, feature names, backbone id,
  threshold (and how it was chosen), training summary, tensor names;
* ``classifier.safetensors``: every array (scaler mean/std and weights).

Neither format can carry code, so loading an artifact never executes any.

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
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from . import FEATURE_SPEC_VERSION
from .errors import ArtifactError
from .types import FEATURE_NAMES, N_FEATURES, FloatArray

THETA_MEAN = FEATURE_NAMES.index("theta_mean")
"""Index of the mean curvature (feature 17), the training-free score."""

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


def _svm_decision(p: dict[str, FloatArray], x: FloatArray) -> FloatArray:
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
    out: FloatArray = p["svm.platt_a"].reshape(()) * _svm_decision(p, x) + p[
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
        width = int(self.scaler.mean.shape[0])
        if x.shape[1] != width:
            raise ValueError(f"expected {width} features per row, got {x.shape[1]}")
        return PROBA[self.kind](self.params, self.scaler.transform(x))

    def backbone_mismatches(self, options: dict[str, Any]) -> list[str]:
        """How ``options`` (the embedder's ``image_size``, ``normalize``, ``dtype``, ...)
        differ from the ``backbone_options`` recorded at training, one line each.

        Options the artifact did not record are not compared; empty when all match.
        """
        recorded = self.summary.get("backbone_options") or {}
        return [
            f"{k}: trained with {recorded[k]!r}, now {options[k]!r}"
            for k in sorted(recorded)
            if k in options and options[k] != recorded[k]
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
    n = s.size
    # the most real rows that may be flagged: the largest k with k / n <= target_fpr,
    # measured as the rate is (floor(target * n) alone loses one to rounding: 0.29 * 100)
    allowed = min(int(np.floor(target_fpr * n)), n)
    while allowed < n and (allowed + 1) / n <= target_fpr:
        allowed += 1
    while allowed > 0 and allowed / n > target_fpr:
        allowed -= 1
    if allowed <= 0:
        return float(np.nextafter(s[-1], np.inf))
    if allowed >= n:
        return float(s[0])  # every real row may be flagged
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
        torch.nn.Linear(x.shape[1], 64),
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


def _scalar(v: float) -> FloatArray:
    return np.array([float(v)], dtype=np.float64)


def export_trees(trees: list[Any], value_fn: Callable[[FloatArray], FloatArray]) -> dict[str, Any]:
    """Pack scikit-learn fitted trees (``estimator.tree_``) into flat node arrays.

    ``value_fn`` maps a tree's ``value`` array ``(nodes, outputs, classes)`` to one
    float per node (P(class 1) for a forest, the raw leaf value for boosting).
    Child indices are made global (offset per tree); leaves keep -1.
    """
    left, right, feature, thresh, value, roots = [], [], [], [], [], []
    offset, depth = 0, 0
    for tree in trees:
        t = tree.tree_
        cl = t.children_left.astype(np.int64)
        cr = t.children_right.astype(np.int64)
        left.append(np.where(cl >= 0, cl + offset, -1))
        right.append(np.where(cr >= 0, cr + offset, -1))
        feature.append(t.feature.astype(np.int64))
        thresh.append(t.threshold.astype(np.float64))
        value.append(value_fn(np.asarray(t.value, dtype=np.float64)))
        roots.append(offset)
        offset += t.node_count
        depth = max(depth, int(t.max_depth))
    return {
        "forest.left": np.concatenate(left).astype(np.float64),
        "forest.right": np.concatenate(right).astype(np.float64),
        "forest.feature": np.concatenate(feature).astype(np.float64),
        "forest.threshold": np.concatenate(thresh),
        "forest.value": np.concatenate(value),
        "forest.roots": np.asarray(roots, dtype=np.float64),
        "forest.depth": _scalar(depth),
    }


def _class1_fraction(v: FloatArray) -> FloatArray:
    counts = v[:, 0, :]
    out: FloatArray = counts[:, 1] / np.maximum(counts.sum(axis=1), 1e-300)
    return out


def _raw_leaf(v: FloatArray) -> FloatArray:
    out: FloatArray = v[:, 0, 0].copy()
    return out


def fit_kind(
    kind: str, x: FloatArray, y: FloatArray, seed: int = 0, **hyper: Any
) -> tuple[dict[str, FloatArray], Any]:
    """Fit one kind on scaled training rows; return its arrays and the fitted
    scikit-learn (or torch-free) model it was exported from (None when there is none).

    ``hyper`` overrides the paper's hyper-parameters (``n_trees``, ``max_depth``,
    ``rounds``, ``learning_rate``, ``epochs``, ``lr``, ``batch_size``).
    """
    if kind == "mlp":
        params = _fit_mlp(
            x,
            y,
            int(hyper.get("epochs", 10)),
            float(hyper.get("lr", 1e-3)),
            int(hyper.get("batch_size", 32)),
            seed,
        )
        return params, None
    if kind == "logreg":
        from sklearn.linear_model import LogisticRegression

        lr_model = LogisticRegression(max_iter=1000, random_state=seed).fit(x, y)
        return {
            "coef": lr_model.coef_.astype(np.float64),
            "intercept": lr_model.intercept_.astype(np.float64),
        }, lr_model
    if kind == "gaussian_nb":
        from sklearn.naive_bayes import GaussianNB

        nb = GaussianNB().fit(x, y)
        return {
            "nb.theta": nb.theta_.astype(np.float64),
            "nb.var": nb.var_.astype(np.float64),
            "nb.log_prior": np.log(nb.class_prior_.astype(np.float64)),
        }, nb
    if kind == "random_forest":
        from sklearn.ensemble import RandomForestClassifier

        rf = RandomForestClassifier(
            n_estimators=int(hyper.get("n_trees", 400)),
            max_depth=int(hyper.get("max_depth", 6)),
            random_state=seed,
            n_jobs=1,
        ).fit(x, y)
        return export_trees(list(rf.estimators_), _class1_fraction), rf
    if kind == "gradient_boosting":
        from sklearn.ensemble import GradientBoostingClassifier

        gb = GradientBoostingClassifier(
            n_estimators=int(hyper.get("rounds", 200)),
            learning_rate=float(hyper.get("learning_rate", 0.1)),
            random_state=seed,
        ).fit(x, y)
        prior = float(gb.init_.class_prior_[1])
        params = export_trees([e[0] for e in gb.estimators_], _raw_leaf)
        params["gb.init"] = _scalar(np.log(prior / (1.0 - prior)))
        params["gb.learning_rate"] = _scalar(gb.learning_rate)
        return params, gb
    if kind == "svm_rbf":
        from sklearn.linear_model import LogisticRegression
        from sklearn.svm import SVC

        svc = SVC(kernel="rbf", gamma="scale", random_state=seed).fit(x, y)
        params = {
            "svm.support_vectors": svc.support_vectors_.astype(np.float64),
            "svm.dual_coef": svc.dual_coef_.reshape(-1).astype(np.float64),
            "svm.intercept": svc.intercept_.astype(np.float64).reshape(1),
            "svm.gamma": _scalar(svc._gamma),
        }
        dec = _svm_decision(params, x)
        platt = LogisticRegression(C=1e6, max_iter=1000).fit(dec[:, None], y)
        params["svm.platt_a"] = _scalar(platt.coef_[0, 0])
        params["svm.platt_b"] = _scalar(platt.intercept_[0])
        return params, svc
    if kind == "mean_curvature":
        real = x[y == 0, THETA_MEAN]
        sd = float(real.std())
        return {"centre": _scalar(real.mean()), "scale": _scalar(sd if sd > 1e-9 else 1.0)}, None
    if kind == "one_class":
        from sklearn.covariance import LedoitWolf

        real_rows = x[y == 0]
        if len(real_rows) < 2:
            raise ValueError("one_class needs at least 2 real rows")
        lw = LedoitWolf().fit(real_rows)
        params = {
            "oc.loc": lw.location_.astype(np.float64),
            "oc.precision": lw.precision_.astype(np.float64),
        }
        log_d2 = np.log(np.maximum(mahalanobis_sq(params, real_rows), 1e-300))
        sd = float(log_d2.std())
        params["oc.log_d2_mean"] = _scalar(log_d2.mean())
        params["oc.log_d2_std"] = _scalar(sd if sd > 1e-9 else 1.0)
        return params, lw
    raise ValueError(f"unknown classifier kind {kind!r}; use one of {', '.join(KINDS)}")


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
    width: int | None = N_FEATURES,
    **hyper: Any,
) -> Classifier:
    """Train on the given (training) rows only: scaler, model and threshold.

    ``width`` is the number of features per row the caller promises (None: any;
    only a 21-wide classifier can be saved for serving).

    ``labels``: 1 = AI-generated, 0 = real. Supervised kinds need both classes;
    ``mean_curvature`` and ``one_class`` learn from the real rows only (AI rows,
    if any, are ignored except by ``threshold_mode="f1"``). The scaler is fitted
    on exactly the rows the model learns from (identity for ``mean_curvature``,
    which works in raw degrees). ``threshold_mode="fpr"`` sets the threshold for
    ``target_fpr`` on the real training rows (the default for operators);
    ``"f1"`` maximises F1 on the training rows (the paper).
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    if x.ndim != 2 or len(x) != len(y) or (width is not None and x.shape[1] != width):
        want = f"(N, {width})" if width is not None else "(N, F)"
        raise ValueError(f"need {want} features and N labels, got {x.shape}, {y.shape}")
    if kind == "mean_curvature" and x.shape[1] != N_FEATURES:
        raise ValueError(f"mean_curvature reads theta_mean: it needs the {N_FEATURES} features")
    if kind not in PROBA:
        raise ValueError(f"unknown classifier kind {kind!r}; use one of {', '.join(KINDS)}")
    classes = set(np.unique(y).tolist())
    if not classes <= {0.0, 1.0}:
        raise ValueError("labels must be 0 (real) or 1 (AI-generated)")
    if kind in SUPERVISED_KINDS and len(classes) < 2:
        raise ValueError("labels must contain both classes, 0 (real) and 1 (AI-generated)")
    if 0.0 not in classes:
        raise ValueError(f"{kind} needs real rows (label 0) to learn from")
    if threshold_mode == "f1" and len(classes) < 2:
        raise ValueError("threshold_mode='f1' needs both classes; use 'fpr'")
    if kind == "mean_curvature":
        scaler = Scaler.identity()
    elif kind == "one_class":
        scaler = Scaler.fit(x[y == 0])
    else:
        scaler = Scaler.fit(x)
    hyper = {"epochs": epochs, "lr": lr, "batch_size": batch_size, **hyper}
    params, _ = fit_kind(kind, scaler.transform(x), y, seed, **hyper)
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
