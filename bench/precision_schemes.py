"""Reduced-precision schemes for the backbone's linear layers: feature drift (emulated) and
the speed of their matmuls (measured), side by side in one run.

Where the error of a reduced mode enters: every ``nn.Linear`` of a random real-size
ViT-S/14 (q, k, v, attention output, MLP; about 90 % of the FLOPs) computes
``emul(x) @ emul(W).T + b`` in float32, where ``emul`` rounds as the scheme would
(rounding first, then float32 products and sums: what bf16/int8 hardware with float32 or
int32 accumulation computes, up to the order of the sums). The patch embedding, the
attention's own matmuls, LayerNorm, softmax and GELU stay float32. Schemes:

* ``w-bf16``: weights rounded to bf16 once (a fixed change of the function), activations
  float32; ``a-bf16``: activations rounded to bf16 at every call, weights float32;
  ``bf16``: both (what bf16 hardware does);
* ``bf16x2``: weights bf16, each activation split into ``hi + lo`` (both bf16): two bf16
  matmuls, the activation's rounding error about 2^-16 instead of 2^-8;
* ``w-int8``: weights int8 per output channel (symmetric), activations float32;
  ``int8``: plus activations int8 per token (dynamic, symmetric); ``int8x2``: weights
  int8 per channel, each activation split into two int8 parts (the second quantises the
  first's residual): two int8 matmuls.

Drift is ``monitor.core.backends.feature_drift`` against float32 on every ``--every``-th
shared clip's centre window, with P(AI) under the bundled classifier. Speed: the four
linear shapes of one batch of 8 frames (2056 tokens) timed as float32 ``mm``, bf16 ``mm``
and int8 ``torch._int_mm`` (where this torch has it on the CPU), and each scheme's sum
(x2 for the split schemes, not counting the splitting itself): an upper bound on what a
kernel could give, not an end-to-end mode. bf16 and bf16x2 need the products summed
*and returned* in float32 (a bf16 output rounds every activation again); torch's CPU
``mm`` returns bf16, so the next column times oneDNN's bf16 "fpmath" mode (float32 in
and out, bf16 products), the one float32-output bf16 GEMM torch offers. The last column
is the whole forward's bound by Amdahl: the Linears' share of an eager float32 forward
(measured with the torch profiler) sped up by that ratio, the rest unchanged.

Usage: python -m bench.precision_schemes [--every 2] [--threads 2] [--seconds 1]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from bench.bench_backends import CLIPS, cpu_line, window_frames
from bench.bench_cpu_paths import loadavg
from bench.common import random_backbone_dir, table, timed, window_features_of
from monitor.core.backbone import load_backbone
from monitor.core.backends import feature_drift
from monitor.core.classifier import load_classifier
from monitor.core.embed import Embedder
from monitor.core.published import resolve_classifier_ref

Round = Callable[[torch.Tensor], torch.Tensor]


def bf16(t: torch.Tensor) -> torch.Tensor:
    """Round to bfloat16 and back."""
    return t.to(torch.bfloat16).float()


def bf16x2(t: torch.Tensor) -> torch.Tensor:
    """``hi + lo``, both bfloat16."""
    hi = bf16(t)
    return hi + bf16(t - hi)


def int8_rows(t: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 per row (last dim): per token for activations, per output channel
    for a ``(out, in)`` weight."""
    scale = t.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30) / 127.0
    return torch.round(t / scale).clamp(-127, 127) * scale


def int8x2_rows(t: torch.Tensor) -> torch.Tensor:
    """Two int8 parts per row: the second quantises the first's residual."""
    first = int8_rows(t)
    return first + int8_rows(t - first)


def ident(t: torch.Tensor) -> torch.Tensor:
    return t


SCHEMES: dict[str, tuple[Round, Round]] = {
    "w-bf16": (bf16, ident),
    "a-bf16": (ident, bf16),
    "bf16": (bf16, bf16),
    "bf16x2": (bf16, bf16x2),
    "w-int8": (int8_rows, ident),
    "int8": (int8_rows, int8_rows),
    "int8x2": (int8_rows, int8x2_rows),
}
"""name -> (weight rounding, activation rounding)."""


def patch_linears(model: torch.nn.Module, scheme: list[str]) -> None:
    """Every Linear computes ``emul(x) @ emul(W).T + b`` for the scheme named in
    ``scheme[0]`` ("fp32": unchanged), read at each call."""
    for mod in model.modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        cache: dict[str, torch.Tensor] = {}

        def forward(x: torch.Tensor, _m: Any = mod, _c: Any = cache) -> torch.Tensor:
            name = scheme[0]
            if name == "fp32":
                return torch.nn.functional.linear(x, _m.weight, _m.bias)
            wr, ar = SCHEMES[name]
            if name not in _c:
                _c[name] = wr(_m.weight.detach())
            return torch.nn.functional.linear(ar(x), _c[name], _m.bias)

        mod.forward = forward  # type: ignore[method-assign]


@contextmanager
def fpmath_bf16() -> Iterator[None]:
    """float32 matmuls computed by oneDNN in its bf16 "fpmath" mode: inputs rounded to
    bf16, products summed in float32, a float32 result (the one way torch's CPU kernels
    give a bf16 GEMM a float32 output; a plain bf16 ``mm`` rounds its output to bf16)."""
    knob = torch.backends.mkldnn.matmul
    before = knob.fp32_precision
    knob.fp32_precision = "bf16"
    try:
        yield
    finally:
        knob.fp32_precision = before


def linear_share(model: torch.nn.Module, pixels: torch.Tensor) -> float:
    """The share of an eager float32 forward's operator time spent in the Linears
    (``aten::addmm``/``mm``/``linear``), by the torch profiler over three forwards: the
    part a faster matmul can speed up (the rest bounds the whole forward's gain)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        model(pixel_values=pixels)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                model(pixel_values=pixels)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    linear = sum(e.self_cpu_time_total for e in events
                 if e.key in ("aten::addmm", "aten::mm", "aten::linear"))
    return linear / total if total else float("nan")


SHAPES = ((384, 384), (384, 384), (384, 384), (384, 384), (384, 1536), (1536, 384))
"""(in, out) of one block's Linears: q, k, v, attention output, MLP up, MLP down."""


def matmul_speed(tokens: int, seconds: float) -> dict[str, float]:
    """Seconds of one block's linear matmuls at ``tokens`` rows, per element type."""
    out: dict[str, float] = {}
    gen = torch.Generator().manual_seed(0)
    for kind in ("fp32", "bf16", "bf16-f32out", "int8"):
        total = 0.0
        for k, n in SHAPES:
            a = torch.randn(tokens, k, generator=gen)
            b = torch.randn(k, n, generator=gen)
            if kind == "bf16":
                a, b = a.bfloat16(), b.bfloat16()
            if kind == "bf16-f32out":
                with fpmath_bf16():
                    per, _ = timed(lambda a=a, b=b: torch.mm(a, b), torch.device("cpu"),
                                   seconds)
                total += per
                continue
            if kind == "int8":
                a = torch.randint(-127, 128, (tokens, k), dtype=torch.int8, generator=gen)
                b = torch.randint(-127, 128, (k, n), dtype=torch.int8, generator=gen)
                try:
                    torch._int_mm(a, b)
                except (RuntimeError, NotImplementedError):
                    total = float("nan")
                    break
                per, _ = timed(lambda a=a, b=b: torch._int_mm(a, b), torch.device("cpu"),
                               seconds)
            else:
                per, _ = timed(lambda a=a, b=b: torch.mm(a, b), torch.device("cpu"), seconds)
            total += per
        out[kind] = total
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--every", type=int, default=2, help="use every N-th shared clip")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=1.0, help="per matmul timing")
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_line()}; threads {args.threads}; torch {torch.__version__}; "
          f"load at start {loadavg()}")
    speed = matmul_speed(8 * 257, args.seconds)
    cost = {"fp32": speed["fp32"], "w-bf16": speed["fp32"], "a-bf16": speed["bf16"],
            "bf16": speed["bf16"], "bf16x2": 2 * speed["bf16"], "w-int8": speed["fp32"],
            "int8": speed["int8"], "int8x2": 2 * speed["int8"]}
    # bf16 with a float32 output (what bf16 and bf16x2 need: a bf16 output is a rounding
    # of every activation again) as torch's kernels offer it
    cost_f32out = {"a-bf16": speed["bf16-f32out"], "bf16": speed["bf16-f32out"],
                   "bf16x2": 2 * speed["bf16-f32out"]}
    clf_dir = resolve_classifier_ref(None)
    assert clf_dir is not None
    clf = load_classifier(clf_dir)
    bb = load_backbone(str(random_backbone_dir("vits14")), "cpu")
    share = linear_share(bb.model, torch.randn(8, 3, 224, 224,
                                               generator=torch.Generator().manual_seed(0)))
    emb = Embedder(bb, batch_size=8)
    scheme = ["fp32"]
    patch_linears(bb.model, scheme)
    clips = sorted(p for p in CLIPS.iterdir() if p.suffix in (".mp4", ".avi", ".gif"))
    wins = [window_frames(p) for p in clips[:: args.every]]

    def run() -> tuple[np.ndarray, list[np.ndarray]]:
        return window_features_of(emb, wins, clf.zero_step_angle_deg)

    ref, zr = run()
    pr = clf.predict_proba(ref)
    rows: list[list[object]] = []
    for name in ["fp32", *args.schemes.split(",")]:
        scheme[0] = name
        f, zs = (ref, zr) if name == "fp32" else run()
        d = feature_drift(f, ref)
        emb_err = np.concatenate([np.linalg.norm(z - r, axis=1) / np.linalg.norm(r, axis=1)
                                  for z, r in zip(zs, zr)])
        step_err = np.concatenate([
            np.linalg.norm(np.diff(z, axis=0) - np.diff(r, axis=0), axis=1)
            / np.maximum(np.linalg.norm(np.diff(r, axis=0), axis=1), 1e-12)
            for z, r in zip(zs, zr)])
        dp = float(np.abs(clf.predict_proba(f) - pr).max())
        ratio = speed["fp32"] / cost[name]
        ratio_f32out = speed["fp32"] / cost_f32out.get(name, cost[name])
        bound = 1.0 / ((1.0 - share) + share / ratio_f32out)
        rows.append([name, f"{d.max():.2g}", int(np.argmax(d.max(0))), f"{dp:.3g}",
                     f"{np.median(emb_err):.2g}", f"{np.median(step_err):.2g}",
                     f"{ratio:.2f}x" if ratio == ratio else "n/a",
                     f"{ratio_f32out:.2f}x" if ratio_f32out == ratio_f32out else "n/a",
                     f"{bound:.2f}x" if bound == bound else "n/a"])
    print("\nmatmul seconds for one block's linears at 2056 tokens: "
          + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in speed.items()))
    print(f"\n{len(wins)} clips' centre windows; drift against float32 on the same clips")
    print(f"linears' share of an eager float32 forward (batch 8, torch profiler): "
          f"{share:.1%}")
    print(table(["scheme", "drift", "worst feature", "max dP(AI)", "emb. rel. err (median)",
                 "step rel. err (median)", "linears' matmul speed vs fp32",
                 "same, bf16 with a float32 output", "whole forward at most"], rows))
    print(f"\n(load at the end: {loadavg()}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")


if __name__ == "__main__":
    main()
