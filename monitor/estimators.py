"""``from monitor.estimators import ...`` keeps working: the scikit-learn estimators
live in :mod:`monitor.learn.estimators` (needs the ``train`` extra)."""

from .learn.estimators import (
    ReStraVClassifier,
    TrajectoryFeatures,
    VideoEmbedder,
    published_pipeline,
    save_classifier,
    save_pipeline,
)

__all__ = [
    "ReStraVClassifier",
    "TrajectoryFeatures",
    "VideoEmbedder",
    "published_pipeline",
    "save_classifier",
    "save_pipeline",
]
