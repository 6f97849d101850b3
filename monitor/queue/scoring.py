"""Scoring one queued clip: :class:`ClipScorer` (model loaded once, classifiers by name)
and :func:`aggregate`, the clip-level summary of a job's result."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..media.decode import DecodeLimits
from ..media.safe_input import OpenedFile
from ..types import FEATURE_NAMES, NO_CLASSIFIER, Score
from .jobs import INVALID_JOB, UNKNOWN_CLASSIFIER, JobOptions, JobRejected

if TYPE_CHECKING:  # torch: imported when a clip is scored (`worker --check` stays light)
    from ..core.classifier import Classifier
    from ..core.embed import Embedder
    from ..core.pipeline import ClipResult


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def aggregate(result: ClipResult) -> dict[str, Any]:
    """The clip-level summary of a scored clip.

    Over the windows along the clip (the centred window alone when windows were
    not asked for), using only unflagged windows (no repeated frames) when there
    are any, else all of them (``basis`` says which):

    * ``score_mean``/``score_max``: mean and max of the windows' P(AI) (null
      without a classifier); ``is_ai``: ``score_mean >= threshold``;
      ``ai_fraction``: share of windows at or above the threshold;
    * ``features_mean``: the mean of each of the 21 features, useful without a
      classifier (``theta_mean`` is the paper's training-free curvature statistic).
    """
    windows: list[Score] = list(result.windows) if result.windows else [result.centre]
    unflagged = [w for w in windows if not w.flagged]
    if not result.windows:
        basis_name = "centre window"
    elif unflagged:
        basis_name = "unflagged windows"
    else:
        basis_name = "all windows (every window flagged)"
    basis = unflagged or windows
    scores = [w.p_ai for w in basis if w.p_ai is not None]
    threshold = basis[0].threshold if basis else None
    mean = _mean(scores)
    out: dict[str, Any] = {
        "basis": basis_name,
        "windows": len(windows),
        "flagged_windows": len(windows) - len(unflagged),
        "used_windows": len(basis),
        "score_mean": mean,
        "score_max": max(scores) if scores else None,
        "threshold": threshold,
        "is_ai": (mean >= threshold) if mean is not None and threshold is not None else None,
        "ai_fraction": (
            sum(s >= threshold for s in scores) / len(scores)
            if scores and threshold is not None
            else None
        ),
        "features_mean": {
            name: float(sum(float(w.window.features[i]) for w in basis) / len(basis))
            for i, name in enumerate(FEATURE_NAMES)
        },
    }
    return out


class ClipScorer:
    """Scores one local clip for the queue: the model loaded once, classifiers by name.

    ``classifiers`` maps names a job may ask for to artifact directories; they
    are loaded on first use and kept. ``default`` scores jobs that name none;
    the name ``none`` asks for features only (no classifier).
    """

    def __init__(
        self,
        embedder: Embedder,
        default: Classifier | None,
        limits: DecodeLimits,
        classifiers: dict[str, Path] | None = None,
        max_hop: int = 1000,
    ) -> None:
        self.embedder = embedder
        self.default = default
        self.limits = limits
        self.paths = dict(classifiers or {})
        self.max_hop = max_hop
        self._loaded: dict[str, Classifier] = {}
        self._lock = threading.Lock()

    def classifier(self, name: str | None) -> Classifier | None:
        """The classifier for a job (raises :class:`JobRejected` for an unknown name)."""
        if name is None:
            return self.default
        if name == NO_CLASSIFIER:
            return None
        with self._lock:
            if name not in self._loaded:
                if name not in self.paths:
                    known = ", ".join(sorted(self.paths)) or "none configured"
                    raise JobRejected(
                        UNKNOWN_CLASSIFIER, f"unknown classifier {name!r} (known: {known})"
                    )
                from ..core.classifier import load_classifier

                self._loaded[name] = load_classifier(self.paths[name])
            return self._loaded[name]

    def check(self, options: JobOptions) -> Classifier | None:
        """Validate options against this worker's limits; return the classifier to use."""
        if options.hop > self.max_hop:
            raise JobRejected(
                INVALID_JOB, f"hop {options.hop} exceeds queue.max_hop {self.max_hop}"
            )
        return self.classifier(options.classifier)

    def __call__(self, path: OpenedFile, options: JobOptions, shown: str) -> dict[str, Any]:
        """Score ``path``; return ``{"clip": ClipResult.to_json(), "aggregate": ...}``."""
        from ..core.pipeline import score_file

        classifier = self.check(options)
        result = score_file(
            path,
            self.embedder,
            classifier,
            self.limits,
            all_windows=options.windows,
            hop=options.hop,
        )
        clip = result.to_json()
        clip["path"] = shown
        return {"clip": clip, "aggregate": aggregate(result)}


Scorer = Callable[[OpenedFile, JobOptions, str], dict[str, Any]]
"""``scorer(file, options, shown_source)`` -> ``{"clip": ..., "aggregate": ...}``."""
