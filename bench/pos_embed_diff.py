"""How far the two position-embedding resamplings move the 21 features (SPEC section 3).

torch.hub DINOv2 (the official ReStraV code) resamples the 37 x 37 pre-training grid
to 16 x 16 with ``scale_factor = (16 + 0.1) / 37``; transformers resamples to the exact
size. Prints the relative difference of each feature group between the two on the
given clips.

Usage: python -m bench.pos_embed_diff [--model REF | --arch vits14] CLIP...
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bench.common import random_backbone_dir, table
from monitor.core.backbone import load_backbone
from monitor.core.embed import Embedder
from monitor.core.pipeline import score_file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("clips", nargs="+", type=Path)
    ap.add_argument("--model")
    ap.add_argument("--arch", default="vits14", choices=["vits14", "tiny"])
    args = ap.parse_args()
    ref = args.model or str(random_backbone_dir(args.arch))
    hub = Embedder(load_backbone(ref, "cpu", pos_embed="torchhub"), batch_size=8)
    tf = Embedder(load_backbone(ref, "cpu", pos_embed="transformers"), batch_size=8)
    groups = {"d_0..d_6": slice(0, 7), "theta_0..theta_5": slice(7, 13),
              "d mean/min/max/var": slice(13, 17), "theta mean/min/max/var": slice(17, 21)}
    rows = []
    for clip in args.clips:
        a = score_file(clip, hub).centre.window.features
        b = score_file(clip, tf).centre.window.features
        rel = np.abs(a - b) / np.maximum(np.abs(b), 1e-9)
        rows.append([clip.name] + [f"{rel[g].max():.2e}" for g in groups.values()])
    print(f"backbone: {args.model or 'random ' + args.arch}; max relative difference "
          "torchhub vs transformers resampling\n")
    print(table(["clip", *groups], rows))


if __name__ == "__main__":
    main()
