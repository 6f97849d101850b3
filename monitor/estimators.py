"""scikit-learn estimators for ReStraV: ``from monitor.estimators import ...``.

Three estimators that compose in :class:`sklearn.pipeline.Pipeline`:

* :class:`VideoEmbedder` - video paths (or ``(path, start_s)`` pairs) in, the
  ``(n, 24, D)`` DINOv2 embeddings of each clip's window out, through the same
  decode/sample/embed code as ``restrav score`` (:func:`monitor.pipeline.score_file`).
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

scikit-learn is imported here only; the core modules do not need it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "monitor.estimators needs scikit-learn >= 1.6: pip install 'restrav-monitor[train]' "
        "(or pip install 'scikit-learn>=1.6')"
    ) from exc

from .backends import make_embedder
from .classifier import (
    KINDS,
    Classifier,
    Scaler,
    load_classifier,
)
from .decode import DecodeLimits
from .embed import Embedder
from .fitting import fit_classifier
from .geometry import ZERO_STEP_EPS, features_from_steps, trajectory_steps
from .pipeline import score_file
from .published import bundled_classifier_dir
from .types import (
    FEATURE_NAMES,
    N_FEATURES,
    WINDOW_SAMPLES,
    FloatArray,
    check_zero_step_angle,
)

THRESHOLD_MODES = ("fpr", "f1", "fixed")

_EMBEDDERS: dict[tuple[Any, ...], Embedder] = {}
"""Loaded backbones shared by clones of a VideoEmbedder (GridSearchCV clones often)."""


def _as_trajectories(x: Any) -> list[npt.NDArray[Any]]:
    """Host views (no copy for CPU numpy/torch) of each ``(T, D)`` trajectory."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if t.device.type != "cpu":
            t = t.cpu()  # one device-to-host copy for the whole batch
        x = t.numpy()
    if isinstance(x, np.ndarray):
        if x.ndim != 3:
            raise ValueError(f"trajectories must be (n, T, D), got shape {x.shape}")
        return list(x)
    if isinstance(x, Sequence) and not isinstance(x, str | bytes):
        out = []
        for i, item in enumerate(x):
            a = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
            if a.ndim != 2:
                raise ValueError(f"trajectory {i} must be (T, D), got shape {a.shape}")
            out.append(a)
        return out
    raise ValueError(f"expected an (n, T, D) array, tensor or list of (T, D), got {type(x)}")


class TrajectoryFeatures(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Trajectories in, ReStraV geometry out (float64 numpy, one row per trajectory).

    Input: an ``(n, T, D)`` numpy array or torch tensor (CPU or CUDA; a CUDA tensor
    is copied to the host once, a CPU one is read without a copy), or a list of
    ``(T_i, D)`` arrays/tensors of different lengths.

    * ``steps=False`` (default): the 21 SPEC features of each trajectory, which must
      have ``T == 24``; equal to :func:`monitor.geometry.window_features`.
    * ``steps=True``: the ``samples - 1`` distances then the ``samples - 2`` turning
      angles (degrees) of each trajectory (``3 <= T <= samples``); shorter ones are
      padded with NaN.

    ``zero_step_angle_deg`` is the angle next to a zero-length step (a repeated
    frame): 0 per SPEC, or 90 as the upstream code and the published classifier.

    ``fit`` learns nothing and returns self.
    """

    def __init__(
        self,
        steps: bool = False,
        samples: int = WINDOW_SAMPLES,
        zero_step_eps: float = ZERO_STEP_EPS,
        zero_step_angle_deg: float = 0.0,
    ) -> None:
        self.steps = steps
        self.samples = samples
        self.zero_step_eps = zero_step_eps
        self.zero_step_angle_deg = zero_step_angle_deg

    def fit(self, x: Any, y: Any = None) -> TrajectoryFeatures:
        """Check the parameters; nothing is learned."""
        if self.samples < 3:
            raise ValueError(f"samples must be >= 3, got {self.samples}")
        check_zero_step_angle(self.zero_step_angle_deg)
        _as_trajectories(x)
        return self

    def transform(self, x: Any) -> FloatArray:
        """``(n, 21)`` features, or ``(n, 2 * samples - 3)`` steps; float64."""
        trajs = _as_trajectories(x)
        width = N_FEATURES if not self.steps else 2 * self.samples - 3
        out = np.full((len(trajs), width), np.nan, dtype=np.float64)
        for i, z in enumerate(trajs):
            if not self.steps and z.shape[0] != WINDOW_SAMPLES:
                raise ValueError(
                    f"trajectory {i} has {z.shape[0]} samples; the 21 features need "
                    f"{WINDOW_SAMPLES} (use steps=True for other lengths)"
                )
            if self.steps and z.shape[0] > self.samples:
                raise ValueError(
                    f"trajectory {i} has {z.shape[0]} samples > samples={self.samples}"
                )
            d, theta, _ = trajectory_steps(z, self.zero_step_eps, self.zero_step_angle_deg)
            if self.steps:
                out[i, : len(d)] = d
                out[i, self.samples - 1 : self.samples - 1 + len(theta)] = theta
            else:
                out[i] = features_from_steps(d, theta)
        return out

    def get_feature_names_out(self, input_features: Any = None) -> npt.NDArray[np.object_]:
        """The 21 SPEC feature names, or ``d_0..``, ``theta_0..`` with ``steps``."""
        if not self.steps:
            return np.asarray(FEATURE_NAMES, dtype=object)
        names = [f"d_{i}" for i in range(self.samples - 1)]
        names += [f"theta_{i}" for i in range(self.samples - 2)]
        return np.asarray(names, dtype=object)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.three_d_array = True
        tags.input_tags.two_d_array = False
        return tags


class VideoEmbedder(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Video paths in, ``(n, 24, D)`` float32 embeddings of the paper's window out.

    Each item of the input is a path, or a ``(path, start_s)`` pair placing the
    window at ``start_s`` seconds instead of the clip's middle. With ``hop`` (in
    samples), every window along each clip is returned instead, all clips'
    windows concatenated (so rows are windows, not clips). Decoding, sampling and
    embedding are :func:`monitor.pipeline.score_file`, the code of ``restrav score``.

    ``model``, ``device``, ``dtype``, ``image_size`` and ``normalize`` are those of
    ``restrav score`` (``--model`` etc.), and so are ``backend`` and ``backend_mode``
    (``--backend``, ``--backend-mode``: :func:`monitor.backends.make_embedder`, the
    constructor every path uses); the loaded backbone is shared by clones.
    Bad input raises :class:`monitor.errors.InputError` naming the file.
    """

    def __init__(
        self,
        model: str = "facebook/dinov2-small",
        device: str = "auto",
        dtype: str = "float32",
        batch_size: int = 8,
        image_size: int = 224,
        normalize: str = "none",
        hop: int | None = None,
        backend: str = "torch",
        backend_mode: str = "float32",
    ) -> None:
        self.model = model
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.image_size = image_size
        self.normalize = normalize
        self.hop = hop
        self.backend = backend
        self.backend_mode = backend_mode

    def fit(self, x: Any, y: Any = None) -> VideoEmbedder:
        """Nothing to learn; returns self (the backbone loads on first transform)."""
        return self

    def embedder(self) -> Embedder:
        """The Embedder for these parameters (loaded once per process)."""
        key = (self.model, self.device, self.dtype, self.image_size, self.batch_size,
               self.normalize, self.backend, self.backend_mode)
        if key not in _EMBEDDERS:
            _EMBEDDERS[key] = make_embedder(
                self.model, self.device, self.dtype, self.image_size,
                batch_size=self.batch_size, normalize=self.normalize,  # type: ignore[arg-type]
                backend=self.backend, mode=self.backend_mode,
            )
        return _EMBEDDERS[key]

    def transform(self, x: Sequence[Any]) -> npt.NDArray[np.float32]:
        """Embed each clip's window: ``(n, 24, D)`` float32 on the host."""
        emb = self.embedder()
        out: list[torch.Tensor] = []
        for item in x:
            if isinstance(item, tuple | list):
                path, start = item
                start_s: float | None = float(start)
            else:
                path, start_s = item, None
            res = score_file(
                Path(str(path)),
                emb,
                limits=DecodeLimits(),
                all_windows=self.hop is not None,
                hop=self.hop or 1,
                keep_embeddings=True,
                start_s=start_s,
            )
            if self.hop is None:
                assert res.centre_embeddings is not None
                out.append(res.centre_embeddings[None])
            elif res.window_embeddings:
                out.append(torch.stack(res.window_embeddings))
        if not out:
            return np.empty((0, WINDOW_SAMPLES, emb.embedding_dim), dtype=np.float32)
        result: npt.NDArray[np.float32] = torch.cat(out).float().cpu().numpy()
        return result

    def get_feature_names_out(self, input_features: Any = None) -> npt.NDArray[np.object_]:
        """Names of the output's sample axis (axis 1): ``sample_0`` .. ``sample_23``."""
        return np.asarray([f"sample_{i}" for i in range(WINDOW_SAMPLES)], dtype=object)

    def set_output(self, *, transform: str | None = None) -> VideoEmbedder:
        """Only the default (numpy) container: the output is 3-D, not a table."""
        if transform not in (None, "default"):
            raise ValueError(
                f"VideoEmbedder outputs (n, 24, D) arrays, which {transform!r} cannot hold; "
                "call set_output on the steps after TrajectoryFeatures instead"
            )
        return self

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        tags.non_deterministic = False
        return tags


class ReStraVClassifier(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """A ReStraV window classifier as a scikit-learn binary classifier.

    ``kind`` is one of :data:`monitor.classifier.KINDS` (``mlp``, ``logreg``, ...).

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
    """

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
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}; use one of {', '.join(KINDS)}")
        if self.threshold_mode not in THRESHOLD_MODES:
            raise ValueError(f"threshold_mode must be one of {THRESHOLD_MODES}")
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
        """The core :class:`~monitor.classifier.Classifier` this estimator serves with.

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
