"""The per-frame resize (monitor/core/resize.py) against interpolate: pixels, features,
P(AI), and the CPU time of each on one thread.

On the centre windows of the shared clips, with a random real-size ViT-S/14 in eager
torch float32 (the same model for both, so only the pixels differ): the largest pixel
difference, the feature drift (:func:`monitor.core.backends.feature_drift`, interpolate's
features as the reference) and the largest change of P(AI) under the bundled classifier;
then CPU ms per frame of each way of making the model input from the clips' RGB frames
(torch single-threaded, as a runtime backend's process runs it).

Usage: python -m bench.resize_drift [--clips 16]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench.bench_backends import CLIPS, cpu_line, window_frames
from bench.common import random_backbone_dir
from monitor.core import resize
from monitor.core.backbone import load_backbone
from monitor.core.backends import feature_drift
from monitor.core.classifier import load_classifier
from monitor.core.embed import preprocess
from monitor.core.geometry import window_features
from monitor.core.published import resolve_classifier_ref


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"CPU: {cpu_line()}; torch single-threaded; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    clips = sorted(p for p in CLIPS.iterdir() if p.suffix in (".mp4", ".avi", ".gif"))
    windows = [window_frames(p) for p in clips[: args.clips]]
    bb = load_backbone(str(random_backbone_dir("vits14")), "cpu")
    clf_dir = resolve_classifier_ref(None)
    assert clf_dir is not None
    clf = load_classifier(clf_dir)

    def features(pixels: list[torch.Tensor]) -> np.ndarray:
        out = []
        for px in pixels:
            with torch.inference_mode():
                z = bb.model(pixel_values=px).last_hidden_state.reshape(len(px), -1)
            out.append(window_features(z.double().numpy()).features)
        return np.stack(out)

    ref_px = [preprocess(w, bb.image_size) for w in windows]
    new_px = [torch.stack([resize.frame_pixels(f, bb.image_size) for f in w]) for w in windows]
    pix = max((a - b).abs().max().item() for a, b in zip(ref_px, new_px))
    f_ref, f_new = features(ref_px), features(new_px)
    drift = feature_drift(f_new, f_ref)
    dp = np.abs(clf.predict_proba(f_new) - clf.predict_proba(f_ref)).max()
    print(f"{len(windows)} clips' centre windows: max |pixel difference| {pix:.2g} "
          f"(0-1 scale); feature drift max {drift.max():.2g}, median {np.median(drift):.2g}; "
          f"max |dP(AI)| {dp:.2g}")

    frames = [f for w in windows for f in w]
    sizes = sorted({f.shape[:2] for f in frames})
    print(f"CPU ms per frame over {len(frames)} frames (sizes {sizes[0]} .. {sizes[-1]}):")
    for name, fn in (
        ("interpolate (preprocess, batches of 8)",
         lambda: [preprocess(frames[i:i + 8], bb.image_size) for i in range(0, len(frames), 8)]),
        ("banded products (frame_pixels)",
         lambda: [resize.frame_pixels(f, bb.image_size) for f in frames]),
    ):
        t0 = time.process_time()
        fn()
        print(f"  {name}: {1e3 * (time.process_time() - t0) / len(frames):.2f}")


if __name__ == "__main__":
    main()
