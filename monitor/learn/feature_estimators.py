"""The scikit-learn transformers of ReStraV (re-exported by :mod:`monitor.estimators`).

* :class:`VideoEmbedder` - video paths (or ``(path, start_s)`` pairs) in, the
  ``(n, 24, D)`` DINOv2 embeddings of each clip's window out, through the same
  decode/sample/embed code as ``restrav score`` (:func:`monitor.core.pipeline.score_file`).
* :class:`TrajectoryFeatures` - trajectories ``(n, T, D)`` (numpy or torch, or a
  list of ``(T_i, D)`` arrays) in, the 21 SPEC features (``T == 24``) or the
  per-step distances and angles out, float64, in the feature convention
  ``zero_step_angle_deg``; ``fit`` learns nothing.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from numbers import Integral, Real
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import torch

try:
    from sklearn.base import BaseEstimator, TransformerMixin
    from sklearn.utils._param_validation import Interval, Options, StrOptions
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "monitor.estimators needs scikit-learn >= 1.6: pip install 'restrav-monitor[train]' "
        "(or pip install 'scikit-learn>=1.6')"
    ) from exc

from ..core.backbone import DTYPES
from ..core.backends import make_embedder
from ..core.embed import Embedder
from ..core.geometry import ZERO_STEP_EPS, features_from_steps, trajectory_steps
from ..core.pipeline import score_file
from ..media.decode import DecodeLimits
from ..types import FEATURE_NAMES, N_FEATURES, WINDOW_SAMPLES, FloatArray

_EMBEDDERS: dict[tuple[Any, ...], Embedder] = {}
"""Loaded backbones shared by clones of a VideoEmbedder (GridSearchCV clones often)."""


def _as_trajectories(x: Any) -> list[npt.NDArray[Any]]:
    """Host views (no copy for CPU numpy/torch) of each ``(T, D)`` trajectory."""
    if isinstance(x, torch.Tensor):
        x = _host(x)
    if isinstance(x, np.ndarray):
        if x.ndim != 3:
            raise ValueError(f"trajectories must be (n, T, D), got shape {x.shape}")
        return list(x)
    if isinstance(x, Sequence) and not isinstance(x, str | bytes):
        out = []
        for i, item in enumerate(x):
            a = _host(item) if isinstance(item, torch.Tensor) else np.asarray(item)
            if a.ndim != 2:
                raise ValueError(f"trajectory {i} must be (T, D), got shape {a.shape}")
            out.append(a)
        return out
    raise ValueError(f"expected an (n, T, D) array, tensor or list of (T, D), got {type(x)}")


def _host(t: torch.Tensor) -> npt.NDArray[Any]:
    """A tensor as host numpy: no copy for a CPU tensor numpy can hold; numpy has no
    bfloat16, so a bfloat16 tensor is widened to float32 (exact) first."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        t = t.float()
    if t.device.type != "cpu":
        t = t.cpu()  # one device-to-host copy for the whole batch
    return t.numpy()


class TrajectoryFeatures(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Trajectories in, ReStraV geometry out (float64 numpy, one row per trajectory).

    Input: an ``(n, T, D)`` numpy array or torch tensor (CPU or CUDA; a CUDA tensor
    is copied to the host once, a CPU one is read without a copy), or a list of
    ``(T_i, D)`` arrays/tensors of different lengths.

    * ``steps=False`` (default): the 21 SPEC features of each trajectory, which must
      have ``T == 24``; equal to :func:`monitor.core.geometry.window_features`.
    * ``steps=True``: the ``samples - 1`` distances then the ``samples - 2`` turning
      angles (degrees) of each trajectory (``3 <= T <= samples``); shorter ones are
      padded with NaN.

    ``zero_step_angle_deg`` is the angle next to a zero-length step (a repeated
    frame): 0 per SPEC, or 90 as the upstream code and the published classifier.

    ``fit`` learns nothing and returns self. ``transform`` also sets ``repeated_``:
    each trajectory's count of zero-length steps (repeated frames, SPEC section 1);
    the CLI flags a window with any (``flagged``), and so should a caller of this
    estimator (``repeated_ > 0``). A trajectory holding NaN or inf is refused,
    by its index.
    """

    _parameter_constraints: ClassVar[dict[str, Any]] = {
        "steps": ["boolean"],
        "samples": [Interval(Integral, 3, None, closed="left")],
        "zero_step_eps": [Interval(Real, 0, None, closed="left")],
        "zero_step_angle_deg": [Options(Real, {0.0, 90.0})],
    }

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
        """Check the parameters (InvalidParameterError, a ValueError) and the input;
        nothing is learned."""
        self._validate_params()
        _as_trajectories(x)
        return self

    def transform(self, x: Any) -> FloatArray:
        """``(n, 21)`` features, or ``(n, 2 * samples - 3)`` steps; float64. Sets
        ``repeated_`` (zero-length steps per trajectory)."""
        self._validate_params()  # transform needs no fit: check here too
        trajs = _as_trajectories(x)
        width = N_FEATURES if not self.steps else 2 * self.samples - 3
        out = np.full((len(trajs), width), np.nan, dtype=np.float64)
        repeated = np.zeros(len(trajs), dtype=np.int64)
        for i, z in enumerate(trajs):
            if not np.isfinite(z).all():
                raise ValueError(f"trajectory {i} holds NaN or inf values")
            if not self.steps and z.shape[0] != WINDOW_SAMPLES:
                raise ValueError(
                    f"trajectory {i} has {z.shape[0]} samples; the 21 features need "
                    f"{WINDOW_SAMPLES} (use steps=True for other lengths)"
                )
            if self.steps and z.shape[0] > self.samples:
                raise ValueError(
                    f"trajectory {i} has {z.shape[0]} samples > samples={self.samples}"
                )
            d, theta, repeated[i] = trajectory_steps(
                z, self.zero_step_eps, self.zero_step_angle_deg
            )
            if self.steps:
                out[i, : len(d)] = d
                out[i, self.samples - 1 : self.samples - 1 + len(theta)] = theta
            else:
                out[i] = features_from_steps(d, theta)
        self.repeated_ = repeated
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


# auto_wrap_output_keys=None: the (n, 24, D) output is no table, so
# sklearn.set_config(transform_output="pandas") must leave it alone
class VideoEmbedder(TransformerMixin, BaseEstimator,  # type: ignore[misc,call-arg]
                    auto_wrap_output_keys=None):
    """Video paths in, ``(n, 24, D)`` float32 embeddings of the paper's window out.

    Each item of the input is a path, or a ``(path, start_s)`` pair placing the
    window at ``start_s`` seconds instead of the clip's middle. With ``hop`` (in
    samples), every window along each clip is returned instead, all clips'
    windows concatenated (so rows are windows, not clips). Decoding, sampling and
    embedding are :func:`monitor.core.pipeline.score_file`, the code of ``restrav score``.

    ``model``, ``device``, ``dtype``, ``image_size`` and ``normalize`` are those of
    ``restrav score`` (``--model`` etc.), and so are ``backend`` and ``backend_mode``
    (``--backend``, ``--backend-mode``: :func:`monitor.core.backends.make_embedder`, the
    constructor every path uses); the loaded backbone is shared by clones.
    Bad input raises :class:`monitor.errors.InputError` naming the file; a single
    path (a string) instead of a list of them raises TypeError.
    """

    _parameter_constraints: ClassVar[dict[str, Any]] = {
        "model": [str],
        "device": [str],
        "dtype": [StrOptions(set(DTYPES))],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "image_size": [Interval(Integral, 1, None, closed="left")],
        "normalize": [StrOptions({"none", "imagenet"})],
        "hop": [Interval(Integral, 1, None, closed="left"), None],
        "backend": [StrOptions({"auto", "torch", "onnxruntime", "openvino"})],
        "backend_mode": [StrOptions({"float32", "bfloat16", "int8"})],
    }

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
        """Check the parameters; nothing to learn (the backbone loads on first
        transform); returns self."""
        self._validate_params()
        _paths(x)
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
        self._validate_params()  # transform needs no fit: check here too
        items = _paths(x)
        emb = self.embedder()
        out: list[torch.Tensor] = []
        for item in items:
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


def _paths(x: Any) -> Sequence[Any] | npt.NDArray[Any]:
    """``x`` as the sequence of clips it must be: one path alone is refused (iterated,
    it would be read as one path per character)."""
    if isinstance(x, str | bytes | os.PathLike):
        raise TypeError(
            f"expected a list of paths, got the single path {os.fsdecode(x)!r}: "
            "pass [path]"
        )
    if not isinstance(x, Sequence | np.ndarray):
        raise TypeError(f"expected a list of paths, got {type(x).__name__}")
    return x


__all__ = ["TrajectoryFeatures", "VideoEmbedder"]
