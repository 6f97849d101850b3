"""Fitting the classifiers of :mod:`monitor.core.classifier`: each kind's training, the
threshold rules, and the export of scikit-learn trees into flat arrays.

Training only: scoring never imports this module (an artifact holds everything
``predict_proba`` needs). The conventions are those of :mod:`monitor.core.classifier`:
label 1 = AI-generated, the score is P(AI), the scaler is fitted on the training
rows only (SPEC section 6). scikit-learn is imported inside the kinds that need it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

from ..core.classifier import (
    KINDS,
    PROBA,
    SUPERVISED_KINDS,
    THETA_MEAN,
    Classifier,
    Scaler,
    mahalanobis_sq,
    svm_decision,
)
from ..types import N_FEATURES, FloatArray, check_zero_step_angle

ThresholdMode = Literal["fpr", "f1"]


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
        dec = svm_decision(params, x)
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
    zero_step_angle_deg: float = 0.0,
    **hyper: Any,
) -> Classifier:
    """Train on the given (training) rows only: scaler, model and threshold.

    ``zero_step_angle_deg`` is the convention the rows' features were computed in
    (recorded in the classifier so that scoring computes them the same way).

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
    clf = Classifier(
        kind=kind,
        scaler=scaler,
        params=params,
        backbone=backbone,
        zero_step_angle_deg=check_zero_step_angle(zero_step_angle_deg),
    )
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
