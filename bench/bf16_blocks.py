"""Where bf16 rounding enters the features: torch bfloat16 autocast in one block at a time.

For a random real-size ViT-S/14 on a subset of the shared clips' centre windows, prints
the drift (monitor.core.backends.feature_drift, against torch float32 on the same clips), the
worst feature, the largest P(AI) change and the embedding's relative error, with bf16
autocast in all blocks, in each block alone, and in each half.

Usage: python -m bench.bf16_blocks [--every 4]   (every 4th shared clip)
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import torch

from bench.bench_backends import CLIPS, window_frames
from bench.common import random_backbone_dir, table, window_features_of
from monitor.core.backbone import load_backbone
from monitor.core.backends import feature_drift
from monitor.core.classifier import load_classifier
from monitor.core.embed import Embedder
from monitor.core.published import resolve_classifier_ref


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--every", type=int, default=4, help="use every N-th shared clip")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--arch", choices=["vits14", "tiny"], default="vits14")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clf_dir = resolve_classifier_ref(None)
    assert clf_dir is not None
    clf = load_classifier(clf_dir)
    bb = load_backbone(str(random_backbone_dir(args.arch)), "cpu")
    emb = Embedder(bb, batch_size=8)
    clips = sorted(p for p in CLIPS.iterdir() if p.suffix in (".mp4", ".avi", ".gif"))
    wins = [window_frames(p) for p in clips[:: args.every]]
    on: set[int] = set()
    layers: Any = bb.model.encoder.layer  # type: ignore[union-attr]
    for k, layer in enumerate(layers):
        def forward(*a: Any, _f: Any = layer.forward, _k: int = k, **kw: Any) -> Any:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=_k in on):
                out = _f(*a, **kw)
            if isinstance(out, tuple):
                return tuple(o.float() if torch.is_tensor(o) else o for o in out)
            return out.float() if torch.is_tensor(out) else out

        layer.forward = forward

    def run() -> tuple[np.ndarray, list[np.ndarray]]:
        return window_features_of(emb, wins, clf.zero_step_angle_deg)

    ref, zr = run()
    pr = clf.predict_proba(ref)
    n = len(layers)
    schemes = [("all blocks", set(range(n)))] + [(f"block {k}", {k}) for k in range(n)]
    schemes += [("first half", set(range(n // 2))), ("second half", set(range(n // 2, n)))]
    rows: list[list[object]] = []
    for name, sel in schemes:
        on.clear()
        on.update(sel)
        f, zs = run()
        d = feature_drift(f, ref)
        err = np.median([np.median(np.linalg.norm(z - r, axis=1) / np.linalg.norm(r, axis=1))
                         for z, r in zip(zs, zr)])
        dp = float(np.abs(clf.predict_proba(f) - pr).max())
        rows.append([f"bf16 in {name}", f"{d.max():.2g}", int(np.argmax(d.max(0))),
                     f"{dp:.3g}", f"{err:.2g}"])
    print(f"{len(wins)} clips")
    print(table(["scheme", "drift", "worst feature", "max dP(AI)", "emb. rel. err (median)"],
                rows))


if __name__ == "__main__":
    main()
