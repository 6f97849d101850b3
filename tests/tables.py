"""Synthetic feature tables with a known answer, for the training/evaluation tests."""

from __future__ import annotations

import numpy as np

from monitor.learn.dataset import FeatureTable
from monitor.types import FEATURE_NAMES


def synthetic_table(
    n_real: int = 60,
    generators: tuple[str, ...] = ("gen_a", "gen_b"),
    n_per_gen: int = 30,
    windows_per_clip: int = 1,
    groups_real: int = 12,
    separation: float = 6.0,
    fps_shortcut: bool = False,
    seed: int = 0,
) -> FeatureTable:
    """Clips whose mean curvature (feature 17) is ``separation`` degrees higher when AI.

    ``windows_per_clip`` > 1 adds grid rows after each centre row. With
    ``fps_shortcut`` the AI clips are all 8 fps and the real ones 30 fps.
    """
    rng = np.random.default_rng(seed)
    specs: list[tuple[str, int, str, str]] = []
    for i in range(n_real):
        specs.append((f"real/g{i % groups_real}/c{i}.mp4", 0, "real", f"real/g{i % groups_real}"))
    for g in generators:
        for i in range(n_per_gen):
            specs.append((f"ai/{g}/c{i}.mp4", 1, g, f"ai/{g}/c{i}.mp4"))
    cols: dict[str, list[object]] = {k: [] for k in (
        "clip_id", "path", "label", "generator", "group", "window", "window_index", "start_s",
        "repeated_samples", "zero_steps", "flagged", "fps", "duration_s", "width", "height",
        "codec", "format", "frames", *FEATURE_NAMES)}
    for clip_id, label, gen, group in specs:
        fps = (8.0 if label else 30.0) if fps_shortcut else float(rng.choice([24.0, 30.0]))
        dur = float(rng.uniform(3, 10))
        base = rng.normal(size=len(FEATURE_NAMES)) * 5 + 50
        for w in range(windows_per_clip + (1 if windows_per_clip > 1 else 0)):
            window = "centre" if w == 0 else "grid"
            f = base + rng.normal(size=len(FEATURE_NAMES))
            f[17] = 95 + separation * label + rng.normal(0, 2)
            row = dict(
                clip_id=clip_id, path="/x/" + clip_id, label=label, generator=gen, group=group,
                window=window, window_index=-1 if w == 0 else w - 1, start_s=float(w) * 0.087,
                repeated_samples=0, zero_steps=0, flagged=False, fps=fps, duration_s=dur,
                width=64, height=48, codec="h264", format="mp4", frames=int(fps * dur),
            )
            row.update({n: float(v) for n, v in zip(FEATURE_NAMES, f)})
            for k in cols:
                cols[k].append(row[k])
    arrays = {}
    for k, v in cols.items():
        if isinstance(v[0], str):
            arrays[k] = np.array(v, dtype=object)
        else:
            arrays[k] = np.array(v)
    return FeatureTable(arrays, {"backbone": "synthetic"})
