"""CPU backbone backends side by side: speed, feature drift, P(AI) change, build cost.

One run, one process, one machine, every backend and mode (monitor/backends.py):

* the CPU (lscpu model and the flags that matter: AVX2, AVX-512, VNNI, BF16, AMX);
* frames/s of the bare forward at batch 1, 4, 8, 16, 24 per (runtime, mode), and the
  ratio to eager torch float32 measured in the same run;
* drift on the shared clips' centre windows (monitor.core.backends.feature_drift: per feature
  |f - f_torch32| / max(|f_torch32|, the feature's std over the clips), max over features
  and clips), which feature it is worst on, the largest change of P(AI) under the default
  classifier, and where the error enters (median relative error of the embeddings and of
  the steps between consecutive embeddings);
* the graph's build time (empty cache) and its load time (from the verified cache).

The backbone is a random-weight real-size ViT-S/14 (no hub weights needed; speed does not
depend on the weights, drift does somewhat: a real checkpoint may drift differently).
The int8 mode is calibrated on frames of every other shared clip, and measured on all.

Usage: python -m bench.bench_backends [--threads 2] [--seconds 1] [--rounds 3] [--clips 16]
       [--batches 1,4,8,16,24] [--modes torch:float32,...] [--no-drift]

Speed: at each batch size every mode runs ``--rounds`` times in turn (round-robin, at
least ``--seconds`` each); a mode's rate is the batch over its median time.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import random_backbone_dir, table, timed
from monitor.core.backbone import load_backbone
from monitor.core.backends import calibration_pixels, feature_drift, installed
from monitor.core.classifier import load_classifier
from monitor.core.embed import Embedder, preprocess
from monitor.core.geometry import window_features
from monitor.core.graphs import build_runner, runtime_version
from monitor.core.published import resolve_classifier_ref
from monitor.media.decode_file import probe, sample_file
from monitor.media.sampler import centre_window_start, window_times

CLIPS = Path(__file__).resolve().parents[1].parent / "shared/clips"
FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16",
         "amx_int8", "avx512_fp16")
MODES = ("torch:float32", "torch:bfloat16-mixed", "onnxruntime:float32", "openvino:float32",
         "openvino:bfloat16", "onnxruntime:int8")


def cpu_line() -> str:
    """The CPU model (with its family and model numbers: "AMD EPYC" alone names several
    generations, whose OpenVINO speeds differed 1.6x, BENCHMARKS.md) and the flags that
    matter, from lscpu."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    info = dict(
        (k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in out.splitlines())
    )
    flags = set(info.get("Flags", "").split())
    return (
        f"{info.get('Model name', '?')} (family {info.get('CPU family', '?')} model "
        f"{info.get('Model', '?')}), {info.get('CPU(s)', '?')} CPUs; flags: "
        + " ".join(f for f in FLAGS if f in flags)
    )


def window_frames(path: Path) -> list[np.ndarray]:
    """The 24 RGB frames of a clip's centre window (SPEC section 1)."""
    info = probe(path)
    frames: list[np.ndarray] = []
    times = window_times(centre_window_start(info.duration_s))
    sample_file(path, {"c": times}, lambda _n, s: frames.append(s.frame.rgb), info=info)
    return frames


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--arch", choices=["vits14", "tiny"], default="vits14")
    ap.add_argument("--seconds", type=float, default=1.0, help="minimum time per speed point")
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3, help="round-robin rounds per batch size")
    ap.add_argument("--no-drift", action="store_true", help="speed and build cost only")
    ap.add_argument("--batches", default="1,4,8,16,24")
    ap.add_argument("--modes", default=",".join(MODES))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    modes = [tuple(m.split(":")) for m in args.modes.split(",")]
    modes = [m for m in modes if installed(m[0])]

    print(f"CPU: {cpu_line()}")
    print(f"threads {args.threads}; torch {torch.__version__}; onnxruntime "
          f"{runtime_version('onnxruntime') or '-'}; openvino {runtime_version('openvino') or '-'}")
    ref = str(random_backbone_dir(args.arch))
    clf_dir = resolve_classifier_ref(None)
    assert clf_dir is not None
    clf = load_classifier(clf_dir)
    clips = sorted(p for p in CLIPS.iterdir() if p.suffix in (".mp4", ".avi", ".gif"))
    clips = clips[: args.clips]
    windows = [window_frames(p) for p in clips]
    cal_frames = [f for w in windows[1::2] for f in w[::3]]
    cache = Path(tempfile.mkdtemp(prefix="restrav-graphs-"))

    fp32 = load_backbone(ref, "cpu")
    embedders: dict[str, Embedder] = {}
    build: dict[str, tuple[float, float]] = {}
    for rt, md in modes:
        name = f"{rt} {md}"
        if rt == "torch":
            embedders[name] = Embedder(load_backbone(ref, "cpu", md), batch_size=8)
            continue
        cal = calibration_pixels(cal_frames, fp32) if md == "int8" else None
        _, first = build_runner(fp32, rt, md, args.threads, cache, cal)
        runner, again = build_runner(fp32, rt, md, args.threads, cache, cal)
        build[name] = (first.build_s, again.build_s)
        embedders[name] = Embedder(fp32, batch_size=8, runner=runner)

    # speed: the bare forward on ready pixels, every mode at each batch size in turn
    frames = [f for w in windows for f in w]
    # (round-robin rounds, each mode's median: a load that changes during the run
    # weighs on every mode alike)
    speed: dict[str, dict[int, float]] = {n: {} for n in embedders}
    for b in batches:
        px = preprocess(frames[:b], 224, "cpu")
        per_round: dict[str, list[float]] = {n: [] for n in embedders}
        for r in range(args.rounds):
            for name, emb in embedders.items():
                per, _ = timed(lambda e=emb, p=px: e.forward(p), torch.device("cpu"),
                               args.seconds, warmup=1 if r == 0 else 0)
                per_round[name].append(per)
        for name, pers in per_round.items():
            speed[name][b] = b / float(np.median(pers))
    base = speed["torch float32"]
    rows = [[n] + [f"{s[b]:.2f} ({s[b] / base[b]:.2f}x)" for b in batches]
            for n, s in speed.items()]
    print("\nframes/s of the bare forward (ratio to eager torch float32, same run)")
    print(table(["runtime mode"] + [f"batch {b}" for b in batches], rows))

    if args.no_drift:
        rows = [[n, f"{b[0]:.1f} / {b[1]:.2f}"] for n, b in build.items()]
        print("\ngraph build s (empty cache) / load s (verified cache)")
        print(table(["runtime mode", "build s / cached load s"], rows))
        print(f"\n(load at the end: {Path('/proc/loadavg').read_text().split()[:3]})")
        return
    # drift on the shared clips
    feats: dict[str, np.ndarray] = {}
    probs: dict[str, np.ndarray] = {}
    zs: dict[str, list[np.ndarray]] = {}
    for name, emb in embedders.items():
        zs[name] = [emb.embed(w) for w in windows]
        fs = [window_features(z.astype(np.float64), zero_step_angle_deg=clf.zero_step_angle_deg)
              .features for z in zs[name]]
        feats[name] = np.stack(fs)
        probs[name] = clf.predict_proba(feats[name])
    rows = []
    for name in embedders:
        d = feature_drift(feats[name], feats["torch float32"])
        worst = int(np.unravel_index(np.argmax(d), d.shape)[1])
        emb_err = [np.linalg.norm(z - r, axis=1) / np.linalg.norm(r, axis=1)
                   for z, r in zip(zs[name], zs["torch float32"])]
        step_err = [np.linalg.norm(np.diff(z, axis=0) - np.diff(r, axis=0), axis=1)
                    / np.maximum(np.linalg.norm(np.diff(r, axis=0), axis=1), 1e-12)
                    for z, r in zip(zs[name], zs["torch float32"])]
        dp = float(np.max(np.abs(probs[name] - probs["torch float32"])))
        bs = build.get(name)
        rows.append([
            name, f"{d.max():.2g}", f"{np.median(d):.2g}", worst, f"{dp:.3g}",
            f"{np.median(np.concatenate(emb_err)):.2g}",
            f"{np.median(np.concatenate(step_err)):.2g}",
            f"{bs[0]:.1f} / {bs[1]:.2f}" if bs else "-",
        ])
    print(f"\ndrift on {len(clips)} shared clips' centre windows (24 frames each)")
    print(table(["runtime mode", "drift (max)", "drift (median)", "worst feature",
                 "max |dP(AI)|", "emb. rel. err (median)", "step rel. err (median)",
                 "build s / cached load s"], rows))
    print(f"\n(load at the end: {Path('/proc/loadavg').read_text().split()[:3]}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")


if __name__ == "__main__":
    main()
