"""Clip queue throughput: clips per second through Redis and worker processes, against
calling the scorer directly on the same clips in one process.

    python bench/bench_queue.py [--arch tiny|vits14] [--clips N] [--seconds S]

Starts a private redis-server, writes N clips, then measures side by side:

* direct: ``ClipScorer`` called on each clip in turn in a fresh process (model
  loaded and warmed up beforehand, as a worker has it), once before and once after
  the queue runs; torch limited to one thread per process;
* queue, 1 worker and 2 workers: ``python -m workers.cli worker`` processes (one
  torch thread each) started and ready before the clock starts; the clock runs from
  the first XADD to the last result. Every job scores the whole clip (every window,
  hop 1), as the direct call does.

The ratio is queue clips/s over direct clips/s: below 1 with one worker is the
queue's overhead; with two workers it shows how the work spreads over processes.
The backbone has random weights (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from monitor import keys  # noqa: E402
from monitor.config import QueueSettings  # noqa: E402
from monitor.core.backbone import load_backbone  # noqa: E402
from monitor.core.embed import Embedder  # noqa: E402
from monitor.media.decode import DecodeLimits  # noqa: E402
from monitor.queue import ClipScorer, Job, JobOptions, connect, enqueue  # noqa: E402
from tests.media import write_clip  # noqa: E402
from tests.redisproc import RedisProcess  # noqa: E402

ARCHS = {
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2),
    "vits14": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4),
}


def backbone_dir(arch: str, root: Path) -> Path:
    """A random DINOv2 of the given size saved in transformers layout."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    d = root / f"model-{arch}"
    Dinov2Model(Dinov2Config(patch_size=14, image_size=518, **ARCHS[arch])).save_pretrained(d)
    return d


def run_queue(
    n_workers: int, clips: list[Path], model: Path, url: str, root: Path, tag: str
) -> float:
    """Seconds from the first XADD to the last result with ``n_workers`` processes."""
    client = connect(url)
    client.flushdb()
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        HF_HUB_OFFLINE="1",
        RESTRAV_REDIS__URL=url,
        RESTRAV_MODEL__THREADS="1",
        RESTRAV_MODEL__DEVICE="cpu",
        RESTRAV_QUEUE__BLOCK_MS="100",
    )
    procs = []
    for i in range(n_workers):
        log = (root / f"{tag}-w{i}.log").open("wb")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "workers.cli", "worker", "--name", f"{tag}-w{i}",
                 "--model", str(model)],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        )
    try:
        deadline = time.monotonic() + 600
        while not all(client.exists(keys.heartbeat_key(f"{tag}-w{i}")) for i in range(n_workers)):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                sys.exit(f"workers did not start; see {root}")
            time.sleep(0.1)
        settings = QueueSettings()
        ids = [f"{tag}-{i}" for i in range(len(clips))]
        t0 = time.perf_counter()
        for job_id, clip in zip(ids, clips):
            enqueue(client, Job(job_id=job_id, source=str(clip), options=JobOptions()), settings)
        while sum(client.exists(keys.result_key(j)) for j in ids) < len(ids):
            time.sleep(0.01)
        elapsed = time.perf_counter() - t0
        failed = [j for j in ids if '"ok": true' not in (client.get(keys.result_key(j)) or "")]
        if failed:
            sys.exit(f"jobs failed: {failed[:3]}")
        return elapsed
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=60)
        client.close()


def direct_child(model: str, clips: list[str]) -> None:
    """Child process of the direct measurement: built like a worker, prints seconds."""
    torch.set_num_threads(1)
    scorer = ClipScorer(
        Embedder(load_backbone(model, "cpu"), batch_size=8), None, DecodeLimits()
    )
    scorer(Path(clips[0]), JobOptions(), "warm-up")
    t0 = time.perf_counter()
    for c in clips:
        scorer(Path(c), JobOptions(), c)
    print(time.perf_counter() - t0)


def run_direct_child(model: Path, clips: list[Path]) -> float:
    """The direct measurement in a fresh process, so it starts like a worker does."""
    out = subprocess.run(
        [sys.executable, __file__, "--direct-child", str(model), *map(str, clips)],
        check=True, capture_output=True, text=True, cwd=REPO,
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--direct-child":
        direct_child(sys.argv[2], sys.argv[3:])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--arch", choices=sorted(ARCHS), default="tiny")
    ap.add_argument("--clips", type=int, default=40, help="clips per run (default 40)")
    ap.add_argument("--seconds", type=float, default=3.0, help="clip length (default 3 s)")
    ap.add_argument("--size", default="64x48", help="clip size WxH (default 64x48)")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    root = Path(tempfile.mkdtemp(prefix="restrav-bench-queue-"))
    redis_server = RedisProcess(root)
    redis_server.start()
    url = redis_server.url
    try:
        model = backbone_dir(args.arch, root)
        distinct = [root / f"clip-{i}.mp4" for i in range(min(8, args.clips))]
        for i, p in enumerate(distinct):
            write_clip(p, fps=30, n_frames=int(30 * args.seconds), size=(width, height),
                       motion=("linear", "jitter")[i % 2])
        clips = [distinct[i % len(distinct)] for i in range(args.clips)]

        # direct before and after the queue runs: their spread shows the machine's noise
        direct = run_direct_child(model, clips)
        one = run_queue(1, clips, model, url, root, "q1")
        two = run_queue(2, clips, model, url, root, "q2")
        direct_after = run_direct_child(model, clips)
    finally:
        redis_server.stop()

    n = len(clips)
    print(f"clip queue throughput: {n} clips of {args.seconds:g} s at {width}x{height}, "
          f"DINOv2 {args.arch} (random weights), whole clip scored (every window, hop 1)")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          "1 torch thread per process")
    print("vs direct: the mean time of the two direct runs over the row's time")
    print()
    base = (direct + direct_after) / 2
    print(f"| {'mode':<22} | {'seconds':>8} | {'clips/s':>8} | {'vs direct':>9} |")
    print(f"|{'-' * 24}|{'-' * 9}:|{'-' * 9}:|{'-' * 10}:|")
    for label, secs in (("direct (before)", direct), ("queue, 1 worker", one),
                        ("queue, 2 workers", two), ("direct (after)", direct_after)):
        print(f"| {label:<22} | {secs:8.2f} | {n / secs:8.2f} | {base / secs:9.2f} |")


if __name__ == "__main__":
    main()
