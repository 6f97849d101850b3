"""scikit-learn estimators for ReStraV: ``from monitor.estimators import ...``.

Three estimators that compose in :class:`sklearn.pipeline.Pipeline`:

* :class:`VideoEmbedder` - video paths (or ``(path, start_s)`` pairs) in, the
  ``(n, 24, D)`` DINOv2 embeddings of each clip's window out, through the same
  decode/sample/embed code as ``restrav score`` (:func:`monitor.core.pipeline.score_file`).
* :class:`TrajectoryFeatures` - trajectories ``(n, T, D)`` (numpy or torch, or a
  list of ``(T_i, D)`` arrays) in, the 21 SPEC features (``T == 24``) or the
  per-step distances and angles out, float64; ``fit`` learns nothing.
* :class:`ReStraVClassifier` - the project's classifier kinds behind
  ``fit``/``predict_proba``/``predict``/``decision_function``, with the threshold
  chosen as ``restrav train`` does; ``save(dir)``/``load(dir)`` use the CLI's
  artifact format (``classifier.json`` + ``classifier.safetensors``, no pickle).

:func:`save_pipeline` writes a fitted Pipeline ending in a ReStraVClassifier
(optionally after a ``StandardScaler``) as one artifact that ``restrav score -c``
and ``restrav serve -c`` load unchanged. :func:`published_pipeline` is the
bundled published classifier behind a VideoEmbedder and the TrajectoryFeatures
of its convention: paths in, P(AI) out, as ``restrav score`` gives by default.

Feature convention: ``TrajectoryFeatures(zero_step_angle_deg=...)`` gives the
angle at a zero-length step, 0 (SPEC, default) or 90 (the upstream code, which
the published classifier was trained on); a saved pipeline records it in the
artifact, so the CLI computes its features the same way.

The two transformers live in :mod:`monitor.learn.feature_estimators`; this module
has the classifier and the pipeline artifacts, and re-exports both. scikit-learn is
imported in these two modules only; the core modules do not need it.
"""

from __future__ import annotations

from numbers import Integral, Real
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

try:
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.utils._param_validation import Interval, StrOptions
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "monitor.estimators needs scikit-learn >= 1.6: pip install 'restrav-monitor[train]' "
        "(or pip install 'scikit-learn>=1.6')"
    ) from exc

from ..core.classifier import (
    KINDS,
    Classifier,
    Scaler,
    load_classifier,
)
from ..core.geometry import ZERO_STEP_EPS
from ..core.published import bundled_classifier_dir
from ..types import (
    N_FEATURES,
    FloatArray,
    check_zero_step_angle,
)
from .feature_estimators import TrajectoryFeatures, VideoEmbedder
from .fitting import fit_classifier

THRESHOLD_MODES = ("fpr", "f1", "fixed")

HYPER_KEYS: dict[str, tuple[str, ...]] = {
    "random_forest": ("n_trees", "max_depth"),
    "gradient_boosting": ("rounds", "learning_rate"),
}
"""The ``hyper`` keys each kind reads (the others read none)."""

class ReStraVClassifier(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """A ReStraV window classifier as a scikit-learn binary classifier.

    ``kind`` is one of :data:`monitor.core.classifier.KINDS` (``mlp``, ``logreg``, ...).

    Which label is "AI-generated" (as ``pos_label`` in :mod:`sklearn.metrics`):
    ``positive_label`` when given (it must be one of the two labels); otherwise 1
    (or True) when the labels are {0, 1}, {-1, 1} or {False, True}. For any other
    labels (e.g. strings) without ``positive_label``, the estimator follows
    scikit-learn's binary convention in memory (``classes_[1]`` is the positive
    class) but :meth:`save` and :func:`save_pipeline` refuse, since the artifact
    would have to guess which label is AI. The fitted ``positive_label_`` is the
    label taken as AI; ``classes_`` stay sorted as in every scikit-learn classifier,
    so P(AI) is the ``predict_proba`` column of ``positive_label_``.

    ``threshold_mode``: ``"fpr"`` (as ``restrav train``: the lowest threshold with
    false-positive rate <= ``target_fpr`` on the training rows of the other label,
    the real ones), ``"f1"`` (max F1 on the training rows) or ``"fixed"`` (0.5, so
    ``predict`` is the argmax of ``predict_proba``). ``predict`` gives
    ``positive_label_`` where ``P(AI) >= threshold_``. ``decision_function`` is
    scikit-learn's binary score for ``classes_[1]``: ``P(AI) - threshold_`` when
    ``classes_[1]`` is the AI label, ``threshold_ - P(AI)`` otherwise. ``hyper``
    passes extra hyper-parameters to the kind (``n_trees``, ``max_depth``, ...).

    Any number of features is accepted for fitting; :meth:`save` needs the 21.
    Parameters are checked at ``fit`` (``InvalidParameterError``, a ValueError), and
    ``hyper`` may only hold the keys its kind reads (:data:`HYPER_KEYS`). :meth:`save`
    records ``target_fpr``, ``epochs``, ``lr``, ``batch_size``, ``seed`` and ``hyper``,
    and :meth:`load` restores them, so a ``clone`` of a loaded model refits as it was.
    """

    _parameter_constraints: ClassVar[dict[str, Any]] = {
        "kind": [StrOptions(set(KINDS))],
        "threshold_mode": [StrOptions(set(THRESHOLD_MODES))],
        "target_fpr": [Interval(Real, 0, 1, closed="left")],
        "epochs": [Interval(Integral, 1, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "seed": [Interval(Integral, 0, None, closed="left")],
        "hyper": [dict, None],
        "positive_label": "no_validation",
    }

    def __init__(
        self,
        kind: str = "mlp",
        threshold_mode: str = "fpr",
        target_fpr: float = 0.01,
        epochs: int = 10,
        lr: float = 1e-3,
        batch_size: int = 32,
        seed: int = 0,
        hyper: dict[str, Any] | None = None,
        positive_label: Any = None,
    ) -> None:
        self.kind = kind
        self.threshold_mode = threshold_mode
        self.target_fpr = target_fpr
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.seed = seed
        self.hyper = hyper
        self.positive_label = positive_label

    def fit(self, x: Any, y: Any) -> ReStraVClassifier:
        """Fit the scaler, the model and the threshold on ``(x, y)``; returns self."""
        self._validate_params()
        unknown = set(self.hyper or {}) - set(HYPER_KEYS.get(self.kind, ()))
        if unknown:
            raise ValueError(
                f"hyper holds {sorted(unknown)}, which kind={self.kind!r} does not read; "
                f"it reads {list(HYPER_KEYS.get(self.kind, ())) or 'none'}"
            )
        x, y = validate_data(self, x, y, dtype=np.float64)
        check_classification_targets(y)
        self.classes_ = np.unique(y)
        if len(self.classes_) > 2:
            raise ValueError(
                "Only binary classification is supported (real vs AI-generated); "
                f"y has {len(self.classes_)} classes"
            )
        if len(self.classes_) < 2:
            raise ValueError("y has 1 class; ReStraVClassifier needs both (real and AI-generated)")
        given = self.positive_label
        if given is not None and given not in self.classes_.tolist():
            raise ValueError(
                f"positive_label={given!r} is not one of the labels "
                f"{[_plain(c) for c in self.classes_]}"
            )
        known = given if given is not None else _conventional_positive(self.classes_)
        self._positive_label_known = known is not None
        self._pos_col = 1 if known is None else int(self.classes_.tolist().index(known))
        self.positive_label_ = self.classes_[self._pos_col]
        y01 = (y == self.positive_label_).astype(np.int64)
        core = fit_classifier(
            x,
            y01,
            kind=self.kind,
            threshold_mode="f1" if self.threshold_mode == "f1" else "fpr",
            target_fpr=self.target_fpr,
            epochs=self.epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            seed=self.seed,
            width=None,
            **(self.hyper or {}),
        )
        if self.threshold_mode == "fixed":
            core.threshold, core.threshold_mode = 0.5, "fixed"
        self.classifier_ = core
        # fitted on features whose convention it cannot know (save_pipeline takes the
        # TrajectoryFeatures step's)
        self.zero_step_angle_deg_: float | None = None
        self.threshold_ = core.threshold
        return self

    def _p_ai(self, x: Any) -> FloatArray:
        check_is_fitted(self)
        x = validate_data(self, x, reset=False, dtype=np.float64)
        return self.classifier_.predict_proba(x)

    def predict_proba(self, x: Any) -> FloatArray:
        """``(n, 2)`` in ``classes_`` order: P(AI) in the column of ``positive_label_``."""
        p = self._p_ai(x)
        cols = [1.0 - p, p] if self._pos_col == 1 else [p, 1.0 - p]
        return np.column_stack(cols)

    def decision_function(self, x: Any) -> FloatArray:
        """> 0 where ``predict`` says ``classes_[1]`` (scikit-learn's binary convention)."""
        margin = self._p_ai(x) - self.threshold_
        return margin if self._pos_col == 1 else -margin

    def predict(self, x: Any) -> npt.NDArray[Any]:
        """``positive_label_`` where P(AI) >= ``threshold_``, else the other label."""
        is_ai = self._p_ai(x) >= self.threshold_
        col = np.where(is_ai, self._pos_col, 1 - self._pos_col)
        out: npt.NDArray[Any] = self.classes_[col]
        return out

    def save(self, directory: str | Path) -> None:
        """Write the CLI's artifact (``classifier.json`` + ``.safetensors``) to ``directory``."""
        save_classifier(self.classifier_artifact(), directory)

    def classifier_artifact(self, backbone: str = "") -> Classifier:
        """The core :class:`~monitor.core.classifier.Classifier` this estimator serves with.

        Its P(AI) is the probability of ``positive_label_``; raises ValueError when
        that label was not determined (see the class docstring)."""
        check_is_fitted(self)
        if not self._positive_label_known:
            raise ValueError(
                f"labels {[_plain(c) for c in self.classes_]} do not say which one is "
                "AI-generated, and a saved artifact scores P(AI-generated): refit with "
                "positive_label=<the AI label> (or with labels 0/1, 1 = AI-generated)"
            )
        if self.n_features_in_ != N_FEATURES:
            raise ValueError(
                f"only a classifier of the {N_FEATURES} ReStraV features can be saved for "
                f"serving; this one has {self.n_features_in_}"
            )
        core = self.classifier_
        summary = {
            **core.summary,
            "sklearn_classes": [_plain(c) for c in self.classes_],
            "sklearn_positive_label": _plain(self.positive_label_),
            # what load() needs for a clone to refit at the same settings
            "sklearn_params": {k: _plain(getattr(self, k)) for k in _REFIT_PARAMS},
        }
        return Classifier(core.kind, core.scaler, core.params, core.threshold,
                          core.threshold_mode, backbone or core.backbone, summary,
                          core.zero_step_angle_deg, core.provenance)

    @classmethod
    def load(cls, directory: str | Path | None = None) -> ReStraVClassifier:
        """Load a CLI artifact (from ``restrav train``, ``import-classifier`` or
        :meth:`save`) as a fitted estimator; without ``directory``, the bundled
        published classifier. Its ``zero_step_angle_deg_`` is the feature convention
        to compute its inputs in (``TrajectoryFeatures(zero_step_angle_deg=...)``)."""
        core = load_classifier(Path(directory) if directory else bundled_classifier_dir())
        mode = core.threshold_mode
        classes = np.asarray(core.summary.get("sklearn_classes", [0, 1]))
        positive = core.summary.get("sklearn_positive_label", _plain(classes[1]))
        est = cls(
            kind=core.kind,
            threshold_mode="f1" if mode == "max-f1" else "fpr" if mode.startswith("fpr")
            else "fixed",
            positive_label=positive,
            **{k: v for k, v in core.summary.get("sklearn_params", {}).items()
               if k in _REFIT_PARAMS},
        )
        est.classifier_ = core
        est.threshold_ = core.threshold
        est.classes_ = classes
        est.positive_label_ = classes[classes.tolist().index(positive)]
        est._positive_label_known = True
        est._pos_col = int(classes.tolist().index(positive))
        est.n_features_in_ = int(core.scaler.mean.shape[0])
        est.zero_step_angle_deg_ = core.zero_step_angle_deg
        return est

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags


_REFIT_PARAMS = ("target_fpr", "epochs", "lr", "batch_size", "seed", "hyper")
"""Fit settings a saved artifact records for :meth:`ReStraVClassifier.load`."""


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def _conventional_positive(classes: npt.NDArray[Any]) -> Any:
    """1 (or True) for labels {0, 1}, {-1, 1}, {False, True}; None for any other labels."""
    values = [_plain(c) for c in classes]
    if not all(isinstance(v, int | float | bool) for v in values):
        return None
    if set(values) in ({0, 1}, {-1, 1}):
        return classes[1]
    return None


def save_classifier(core: Classifier, directory: str | Path) -> None:
    """Write a core classifier as the CLI's artifact directory."""
    core.save(Path(directory))


def save_pipeline(pipeline: Any, directory: str | Path) -> None:
    """Save a fitted Pipeline ending in a :class:`ReStraVClassifier` as a CLI artifact.

    The artifact scores exactly what the pipeline scores from a clip, so the steps
    before the classifier are limited to what ``restrav score -c`` / ``serve -c``
    reproduce: a :class:`VideoEmbedder` (its ``model`` becomes the artifact's
    backbone, and ``image_size``, ``normalize``, ``dtype`` its recorded
    ``backbone_options``, as ``restrav train`` records them), a
    :class:`TrajectoryFeatures` with ``steps=False`` and the default
    ``zero_step_eps``, and any number of fitted ``StandardScaler`` steps, folded
    into the artifact's scaler as each one transforms (``with_mean=False`` subtracts
    nothing, ``with_std=False`` divides by nothing); ``"passthrough"`` steps are
    skipped. Any other step raises ValueError, as does a classifier whose AI label
    is not determined (see :class:`ReStraVClassifier`).
    """
    from sklearn.preprocessing import StandardScaler

    steps = [est for _, est in pipeline.steps if est is not None and est != "passthrough"]
    clf = steps[-1] if steps else None
    if not isinstance(clf, ReStraVClassifier):
        raise ValueError("the pipeline's last step must be a ReStraVClassifier")
    backbone = ""
    options: dict[str, Any] = {}
    scaler = Scaler.identity()
    angle: float | None = None
    for est in steps[:-1]:
        if isinstance(est, VideoEmbedder):
            backbone = est.model
            options = {"image_size": est.image_size, "normalize": est.normalize,
                       "dtype": est.dtype}
        elif isinstance(est, TrajectoryFeatures):
            if est.steps:
                raise ValueError(
                    "cannot save TrajectoryFeatures(steps=True): the CLI scores the "
                    f"{N_FEATURES} window features, not per-step distances and angles"
                )
            if est.zero_step_eps != ZERO_STEP_EPS:
                raise ValueError(
                    f"cannot save TrajectoryFeatures(zero_step_eps={est.zero_step_eps!r}): "
                    f"restrav score computes the features with {ZERO_STEP_EPS!r}"
                )
            angle = check_zero_step_angle(est.zero_step_angle_deg)
            known = getattr(clf, "zero_step_angle_deg_", None)
            if known is not None and known != angle:
                raise ValueError(
                    f"the classifier was trained on features with {known:g} degrees at "
                    f"zero-length steps, the pipeline computes {angle:g}: use "
                    f"TrajectoryFeatures(zero_step_angle_deg={known:g})"
                )
        elif isinstance(est, StandardScaler):
            check_is_fitted(est)
            scaler = _then(
                scaler,
                np.asarray(est.mean_, dtype=np.float64) if est.with_mean else None,
                np.asarray(est.scale_, dtype=np.float64) if est.with_std else None,
            )
        else:
            raise ValueError(
                f"cannot save a pipeline step {type(est).__name__} as a restrav artifact; "
                "use VideoEmbedder, TrajectoryFeatures, StandardScaler, ReStraVClassifier"
            )
    core = clf.classifier_artifact(backbone)
    core.scaler = _then(scaler, core.scaler.mean, core.scaler.std)
    if angle is not None:
        core.zero_step_angle_deg = angle
    if options:
        core.summary = {**core.summary, "backbone_options": options}
    save_classifier(core, directory)


def _then(first: Scaler, mean: FloatArray | None, std: FloatArray | None) -> Scaler:
    """The one Scaler doing ``first`` then ``(x - mean) / std`` (None: that part skipped).

    ``((x - m1) / s1 - m2) / s2 == (x - (m1 + s1 m2)) / (s1 s2)``.
    """
    m2 = np.zeros_like(first.mean) if mean is None else mean
    s2 = np.ones_like(first.std) if std is None else std
    return Scaler(mean=first.mean + first.std * m2, std=first.std * s2)


def published_pipeline(**embedder_params: Any) -> Any:
    """The bundled published classifier as a fitted Pipeline: video paths in, P(AI)
    out (``predict_proba(paths)[:, 1]``), the features in its convention (90 degrees
    at zero-length steps). ``embedder_params`` go to :class:`VideoEmbedder`
    (``model``, ``device``, ...): the same numbers as ``restrav score`` with the
    same model settings."""
    from sklearn.pipeline import make_pipeline

    clf = ReStraVClassifier.load()
    return make_pipeline(
        VideoEmbedder(**embedder_params),
        TrajectoryFeatures(zero_step_angle_deg=clf.classifier_.zero_step_angle_deg),
        clf,
    )


__all__ = [
    "ReStraVClassifier",
    "TrajectoryFeatures",
    "VideoEmbedder",
    "published_pipeline",
    "save_classifier",
    "save_pipeline",
]
