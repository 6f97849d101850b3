"""What ``--backend auto`` picks on one CPU at each instruction set it is capped to.

A second ISA without a second machine: each round starts one fresh process per ISA, in
turn (the caps are read by each library once, at its first use), with the environment
of :data:`ISAS` (``avx2``: oneDNN in torch and OpenVINO, OpenVINO's own kernels, ATen and
MKL capped to AVX2; ONNX Runtime has no cap and keeps the CPU's full ISA). The process
runs the real ``auto`` decision (:func:`monitor.core.backends.resolve_auto`: every
candidate built from the shared graph cache, checked against eager torch float32 and
timed round-robin) with its decision file removed first, so each round measures, and
prints the decision as JSON.

The table gives, per ISA and round, what auto picked, each candidate's frames/s and its
ratio to eager torch float32 measured in the same process; then, per candidate, the
ratio of its median rate under each cap to its median uncapped rate (rounds interleave
the ISAs, so a changing load weighs on both). The load average is printed beside every
round.

Usage: python -m bench.bench_isa [--rounds 3] [--batch 8] [--threads 2] [--arch vits14]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.bench_backends import cpu_line
from bench.common import random_backbone_dir, table

ROOT = Path(__file__).resolve().parents[1]
AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2", "OV_CPU_MAX_ISA": "AVX2",
        "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
ISAS: dict[str, dict[str, str]] = {"native": {}, "avx2": AVX2}
"""Name -> the environment variables that cap the libraries (empty: the CPU's own ISA)."""

CHILD = """
import json, sys
from pathlib import Path
import torch
from monitor.core.autoselect import isa_flags, isa_in_use
from monitor.core.backbone import load_backbone
from monitor.core.backends import auto_candidates, resolve_auto
ref, batch, threads, cache = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
torch.set_num_threads(threads)
for f in cache.glob("auto-*.json"):
    f.unlink()
bb = load_backbone(ref, "cpu")
choice = resolve_auto(bb, batch, threads, cache)
print(json.dumps({"choice": f"{choice.runtime} {choice.mode}", "fps": choice.frames_per_s,
                  "dropped": choice.dropped, "isa": isa_in_use(),
                  "candidates": [f"{r} {m}" for r, m in auto_candidates(isa_flags())]}))
"""


def load() -> str:
    """The 1-minute load average now."""
    return Path("/proc/loadavg").read_text().split()[0]


def decide(isa: str, ref: Path, batch: int, threads: int, cache: Path) -> dict[str, Any]:
    """One fresh process's auto decision under ``isa``'s caps."""
    env = {k: v for k, v in os.environ.items() if k not in AVX2}
    env.update(ISAS[isa], PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(ref), str(batch), str(threads), str(cache)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"{isa}: the decision failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--arch", choices=["vits14", "tiny"], default="vits14")
    args = ap.parse_args()
    print(f"CPU: {cpu_line()}")
    print(f"batch {args.batch}, {args.threads} threads; caps of 'avx2': "
          + " ".join(f"{k}={v}" for k, v in AVX2.items()))
    ref = random_backbone_dir(args.arch)
    cache = Path(tempfile.mkdtemp(prefix="restrav-isa-"))
    # graphs are built once (the first process), loaded from the verified cache after
    t0 = time.monotonic()
    decide("native", ref, args.batch, args.threads, cache)
    print(f"graphs built and a first decision in {time.monotonic() - t0:.0f} s "
          f"(not counted); load {load()}")
    rows: list[list[object]] = []
    rates: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        for isa in ISAS:
            before = load()
            d = decide(isa, ref, args.batch, args.threads, cache)
            fps = {str(k): float(v) for k, v in d["fps"].items()}
            torch32 = fps.get("torch float32", float("nan"))
            for name, v in fps.items():
                rates.setdefault((isa, name), []).append(v)
            rows.append([
                isa, r + 1, d["isa"]["torch_cpu_capability"], d["choice"],
                ", ".join(f"{n} {v:.2f} ({v / torch32:.2f}x)"
                          for n, v in sorted(fps.items(), key=lambda kv: -kv[1])),
                ", ".join(d["candidates"]),
                f"{before} / {load()}",
            ])
            if d["dropped"]:
                print(f"  {isa} round {r + 1} dropped: {d['dropped']}")
    print("\nauto's decision per ISA and round (frames/s at batch "
          f"{args.batch}; ratio to eager torch float32 in the same process)")
    print(table(["ISA", "round", "torch dispatch", "auto picks", "frames/s (vs torch f32)",
                 "candidates", "load before / after"], rows))
    names = sorted({n for _, n in rates})
    out = []
    for n in names:
        native = rates.get(("native", n))
        capped = rates.get(("avx2", n))
        if native and capped:
            out.append([n, f"{np.median(native):.2f}", f"{np.median(capped):.2f}",
                        f"{np.median(capped) / np.median(native):.2f}x"])
    print("\nmedian frames/s over the rounds, avx2-capped vs native (interleaved processes)")
    print(table(["candidate", "native", "avx2", "avx2 / native"], out))
    print(f"\n(load at the end: {load()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})")


if __name__ == "__main__":
    main()
