"""A notebook-style tour of the scikit-learn API (run it: ``python examples/notebook.py``).

Embeds a few clips with DINOv2, turns the trajectories into the 21 ReStraV
features, cross-validates a classifier with clips grouped, and saves the fitted
pipeline as an artifact that ``restrav score -c DIR`` and ``restrav serve -c DIR``
load. Environment: ``RESTRAV_MODEL`` (a model ref or local directory, default
facebook/dinov2-small), ``RESTRAV_CLIPS`` (a folder with manifest.json, default
../shared/clips), ``RESTRAV_OUT`` (where to save, default ./restrav-example-model).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from sklearn.model_selection import GroupKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from monitor.estimators import (
    ReStraVClassifier,
    TrajectoryFeatures,
    VideoEmbedder,
    save_pipeline,
)

MODEL = os.environ.get("RESTRAV_MODEL", "facebook/dinov2-small")
CLIPS = Path(os.environ.get("RESTRAV_CLIPS", "../shared/clips"))
OUT = Path(os.environ.get("RESTRAV_OUT", "restrav-example-model"))
NAMES = os.environ.get("RESTRAV_CLIP_NAMES", "")

# %% the clips and their labels: "ai-generated" or "real", as in the manifest
manifest = json.loads((CLIPS / "manifest.json").read_text(encoding="utf-8"))
if NAMES:
    manifest = [m for m in manifest if m["file"] in NAMES.split(",")]
paths = [str(CLIPS / m["file"]) for m in manifest]
y = np.array([m["label"] for m in manifest])
AI = "ai-generated"  # string labels must say which one is AI (positive_label)

# %% embed once (the slow part), then work on trajectories
embedder = VideoEmbedder(model=MODEL, device="cpu", batch_size=8)
z = embedder.fit_transform(paths)  # (n_clips, 24, D) float32
features = TrajectoryFeatures().fit_transform(z)  # (n_clips, 21) float64
print("features", features.shape, "theta_mean", features[:, 17].round(1))

# %% cross-validate with each clip its own group (windows of one clip never straddle folds)
model = make_pipeline(TrajectoryFeatures(), StandardScaler(),
                      ReStraVClassifier(kind="logreg", positive_label=AI))
folds = min(2, int(np.sum(y == AI)), int(np.sum(y != AI)))
scores = cross_val_score(model, z, y, groups=np.arange(len(y)), cv=GroupKFold(n_splits=folds))
print("accuracy per fold", scores)

# %% fit on everything and save an artifact the CLI serves unchanged
full = make_pipeline(embedder, TrajectoryFeatures(), StandardScaler(),
                     ReStraVClassifier(kind="logreg", positive_label=AI)).fit(paths, y)
save_pipeline(full, OUT)
p_ai = full.predict_proba(paths)[:, list(full.classes_).index(AI)]  # columns follow classes_
print("P(AI)", p_ai.round(3), "saved to", OUT)
