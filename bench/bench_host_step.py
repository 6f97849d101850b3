"""The engine's host step alone: CPU per sample of ``BatchScorer.score``, before/after.

    python -m bench.bench_host_step [--trees REV|.,REV|.] [--repeat N] [--streams 300]
                                    [--batch 40] [--batches 1500] [--dim 64] [--contend]

A :class:`~monitor.live.batch.BatchScorer` with the bundled classifier, the service's
metrics and a stand-in embedding of ``--dim`` is fed synthetic batches as ``serve``
makes them: ``--streams`` streams sampled at 11.5 Hz with random phases, taken in
sample-time order ``--batch`` at a time (hop 1: every sample of a full window is
scored), with a gap (a new segment) in about 0.5 % of samples and, every 50th batch,
a backlog burst (several samples of a few streams in one batch). The embeddings are
made beforehand; only ``score`` is timed, by the thread's CPU clock, after enough
batches to fill every window.

``--trees`` names the trees to compare, each a git revision or ``.`` (this working
tree, uncommitted changes included); each run is a fresh process, alternating between
trees ``--repeat`` times, and the table shows each run. ``--contend`` runs a pure
Python thread beside the scorer, busy 2 ms in every 5 as the event loop is in ``serve``
(switch interval 1 ms, as ``serve`` sets it): a GIL hand-off of the host step (torch
releases the GIL in each operation) then costs a context switch.
Each run also prints a digest of everything scored (features, P(AI), seq, segment,
times but the clock-dependent ``scored_at``/``wall_*``): equal digests mean the trees
give bit-identical results.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_overload import cpu_model  # noqa: E402
from bench.bench_scale import cpu_flags, export_tree  # noqa: E402

SAMPLE_S = 2.0 / 23


def _batches(streams: int, batch: int, count: int, dim: int, seed: int) -> list[Any]:
    """The ``Embedded`` batches (module docstring), embeddings drawn beforehand."""
    import numpy as np
    import torch

    from monitor.live.batch import Embedded, EngineSample

    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    phase = rng.uniform(0, SAMPLE_S, streams)
    tick = [0] * streams
    segment = [0] * streams
    k = [0] * streams
    due = sorted((float(phase[s]), s) for s in range(streams))
    out = []
    for b in range(count):
        picked: list[int] = []
        while len(picked) < batch:
            _, s = due.pop(0)
            picked.append(s)
            tick[s] += 1
            due.append((float(phase[s]) + tick[s] * SAMPLE_S, s))
        due.sort()
        if b % 50 == 49:  # a backlog burst: a few streams hand over several samples
            picked[-6:] = [picked[0]] * 3 + [picked[1]] * 3
        samples = []
        for s in picked:
            if rng.random() < 0.005:
                segment[s] += 1
                k[s] = 0
            k[s] += 1
            t_s = k[s] * SAMPLE_S
            samples.append(EngineSample(f"s{s}", segment[s], k[s], t_s, None,  # type: ignore[arg-type]
                                        1000.0 + b * 0.01, repeated=bool(rng.random() < 0.01)))
        z = torch.randn(len(samples), dim, generator=gen)
        out.append(Embedded(samples, samples, z, 1000.0 + b * 0.01 + 0.002,
                            1000.0 + b * 0.01 + 0.003, 1000.0 + b * 0.01 + 0.004))
    return out


def _digest(scores: list[Any]) -> str:
    h = hashlib.sha256()
    for sc in scores:
        w = sc.score.window
        h.update(w.features.tobytes())
        h.update(w.distances.tobytes())
        h.update(w.angles_deg.tobytes())
        h.update(repr((sc.stream_id, sc.seq, sc.segment, sc.start_s, sc.end_s, sc.arrival_s,
                       sc.score.p_ai, sc.score.threshold, sc.score.repeated_samples,
                       w.repeated_frames, w.start_s, w.zero_step_angle_deg,
                       sc.wall_end - sc.wall_start)).encode())
    return h.hexdigest()[:16]


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One run in this process (the tree on ``sys.path``): us per sample and the digest."""
    import torch
    from prometheus_client import CollectorRegistry

    from monitor.config import EngineSettings
    from monitor.core.classifier import load_classifier
    from monitor.core.published import bundled_classifier_dir
    from monitor.live.batch import BatchScorer
    from monitor.metrics import StreamMetrics

    class Embedder:
        device = torch.device("cpu")
        embedding_dim = args.dim

        def embed_tensor(self, frames: Any) -> torch.Tensor:
            raise NotImplementedError

    torch.set_num_threads(1)
    sys.setswitchinterval(0.001)  # as serve sets it
    clf = load_classifier(bundled_classifier_dir())
    scorer = BatchScorer(Embedder(), clf, EngineSettings(convert_threads=1),  # type: ignore[arg-type]
                         StreamMetrics(CollectorRegistry()), lambda sid: 1)
    warm = -(-args.streams * 26 // args.batch)
    batches = _batches(args.streams, args.batch, warm + args.batches, args.dim, seed=0)
    stop = threading.Event()

    def spin() -> None:  # an event loop busy 40 % of the time, in pure Python
        x = 0
        while not stop.is_set():
            t = time.perf_counter() + 0.002
            while time.perf_counter() < t:
                for i in range(100):
                    x += i
            time.sleep(0.003)

    if args.contend:
        threading.Thread(target=spin, daemon=True).start()
    scores: list[Any] = []
    for e in batches[:warm]:
        scores += scorer.score(e)
    n = sum(len(e.samples) for e in batches[warm:])
    c0, t0 = time.thread_time(), time.perf_counter()
    for e in batches[warm:]:
        scores += scorer.score(e)
    c1, t1 = time.thread_time(), time.perf_counter()
    stop.set()
    return {"us_cpu": (c1 - c0) / n * 1e6, "us_wall": (t1 - t0) / n * 1e6, "samples": n,
            "windows": len(scores), "digest": _digest(scores)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trees", default="HEAD,.", help="git revisions or . (this tree)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--streams", type=int, default=300)
    p.add_argument("--batch", type=int, default=40)
    p.add_argument("--batches", type=int, default=1500)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--contend", action="store_true")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return 0
    import torch

    from bench.common import machine, table

    print("# bench_host_step: BatchScorer.score alone (the engine's host step)")
    print(f"{machine(torch.device('cpu'))} (each run: 1 torch thread); {cpu_model()}; "
          f"flags: {cpu_flags()}")
    print(f"{args.streams} streams, batches of {args.batch}, D = {args.dim}, hop 1, bundled "
          f"classifier, {args.batches} batches timed{', GIL contended' if args.contend else ''}"
          "\n")
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        names = args.trees.split(",")
        trees = [ROOT if r == "." else export_tree(r, Path(tmp) / f"t{i}")
                 for i, r in enumerate(names)]
        flags = [f"--{k}={v}" for k, v in (("streams", args.streams), ("batch", args.batch),
                                          ("batches", args.batches), ("dim", args.dim))]
        flags += ["--contend"] if args.contend else []
        for _ in range(args.repeat):
            for name, tree in zip(names, trees):
                out = subprocess.run(
                    [sys.executable, "-m", "bench.bench_host_step", "--child", *flags],
                    cwd=tree, capture_output=True, text=True, check=True).stdout
                r = json.loads(out.strip().splitlines()[-1])
                rows.append([name, r["us_cpu"], r["us_wall"], r["samples"], r["windows"],
                             r["digest"]])
    print(table(["tree", "CPU us/sample", "wall us/sample", "samples", "windows", "digest"],
                rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
