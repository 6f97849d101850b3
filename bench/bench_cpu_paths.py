"""Eager torch beside a fast CPU backend on the two service paths, side by side in one run:

* ``queue``: a real ``restrav worker`` process (``model.threads`` cores) scoring real
  encoded 720p25 H.264 clips from a private redis-server, every window at hop 1: clips
  per minute, from the first XADD to the last answer, each backend in turn;
* ``serve``: a real ``restrav serve`` process with N 720p25 H.264 streams played in real
  time from local files (the ``file`` source, looping): per stream, windows scored per
  second (the full rate is 11.5 at hop 1), windows skipped, and the p50/p95 latency from
  frame arrival to score written (``restrav_stream_e2e_latency_seconds``, interpolated in
  its buckets as Prometheus' histogram_quantile does), measured over ``--seconds``,
  ``--warmup`` seconds after every stream's first score ("ready s": from the process's
  start to then); each (backend, streams) in turn, backends alternating; and the
  engine's measured capacity (``restrav_engine_capacity_samples_per_second``) with the
  number of full-rate streams it would carry (capacity / 11.5). With ``--source rtsp``
  the streams are real RTSP: rtsp-server-perl on loopback (``tests/liveproc.py``), one
  ffmpeg publisher per stream pushing the clip in real time (``-re``, looping, copied,
  not re-encoded), and serve reading them over UDP on loopback (the server refuses
  interleaved TCP): depacketising and the RTP/RTSP path are
  in the measurement, the publishers' CPU (small: no encode) shares the cores.

The backbone is a random-weight real-size ViT-S/14 (speed does not depend on the
weights). Graphs are built into a private cache before the clock starts (their cost is
bench_backends' "build s / cached load s"); every process then loads from that cache.
The CPU (lscpu model and flags) and the load average at the start and end are printed:
on a shared machine only the ratios in one run mean anything.

Usage: python -m bench.bench_cpu_paths [--fast openvino] [--threads 2] [--parts queue,serve]
       [--queue-clips 3] [--clip-seconds 3] [--streams 1,2] [--seconds 40] [--warmup 10]
       [--source file|rtsp]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from bench.bench_backends import cpu_line
from bench.common import random_backbone_dir, table
from monitor import keys
from monitor.config import QueueSettings
from monitor.core.backbone import load_backbone
from monitor.core.backends import resolve_auto
from monitor.core.graphs import build_runner
from monitor.queue import Job, JobOptions, connect, enqueue
from tests.liveproc import Publisher, RtspServer, end
from tests.redisproc import RedisProcess, free_port, wait_port

REPO = Path(__file__).resolve().parents[1]
TOKEN = "bench-token"


def loadavg() -> str:
    """The 1-minute load average now."""
    return Path("/proc/loadavg").read_text().split()[0]


def make_720p(path: Path, seconds: float) -> Path:
    """1280x720 25 fps H.264 (moving test pattern, keyframe every second)."""
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
         "testsrc2=size=1280x720:rate=25", "-t", str(seconds), "-c:v", "libx264", "-g", "25",
         "-pix_fmt", "yuv420p", "-preset", "veryfast", "-y", str(path)],
        check=True,
    )
    return path


def env_for(backend: str, model: Path, cache: Path, threads: int) -> dict[str, str]:
    """Environment of a worker or serve process running ``backend`` (``name`` or
    ``name+KEY=VALUE+KEY=VALUE``: settings of that row, as environment variables)."""
    name, *extra = backend.split("+")
    return dict(
        os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1",
        RESTRAV_MODEL__REF=str(model), RESTRAV_MODEL__DEVICE="cpu",
        RESTRAV_MODEL__THREADS=str(threads), RESTRAV_MODEL__BACKEND=name,
        RESTRAV_MODEL__GRAPH_CACHE=str(cache),
        **dict(kv.split("=", 1) for kv in extra),
    )


# -- queue ---------------------------------------------------------------------------------


def queue_run(backend: str, clips: list[Path], model: Path, cache: Path, threads: int,
              url: str, root: Path) -> tuple[float, float]:
    """(seconds to ready, seconds from the first XADD to the last answer) for one worker."""
    client = connect(url)
    client.flushdb()
    label = re.sub(r"[^A-Za-z0-9_.-]", "_", backend)
    name = f"w-{label}"
    env = env_for(backend, model, cache, threads)
    env.update(RESTRAV_REDIS__URL=url, RESTRAV_QUEUE__BLOCK_MS="100")
    t_start = time.perf_counter()
    with (root / f"{name}.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "workers.cli", "worker", "--name", name],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 900
        while not client.exists(keys.heartbeat_key(name)):
            if time.monotonic() > deadline or proc.poll() is not None:
                sys.exit(f"worker {name} did not start; see {root}/{name}.log")
            time.sleep(0.1)
        ready = time.perf_counter() - t_start
        ids = [f"{label}-{i}" for i in range(len(clips))]
        t0 = time.perf_counter()
        for job_id, clip in zip(ids, clips):
            enqueue(client, Job(job_id=job_id, source=str(clip), options=JobOptions()),
                    QueueSettings())
        while sum(client.exists(keys.result_key(j)) for j in ids) < len(ids):
            if proc.poll() is not None:
                sys.exit(f"worker {name} exited; see {root}/{name}.log")
            time.sleep(0.05)
        elapsed = time.perf_counter() - t0
        bad = [j for j in ids if '"ok": true' not in (client.get(keys.result_key(j)) or "")]
        if bad:
            sys.exit(f"jobs failed: {bad}; see {root}/{name}.log")
        return ready, elapsed
    finally:
        end(proc, signal.SIGTERM)
        client.close()


# -- serve ---------------------------------------------------------------------------------

SAMPLE = re.compile(r'^(restrav_[a-z0-9_]+)(?:\{([^}]*)\})? ([0-9.eE+-]+|NaN|\+Inf)$')


def scrape(port: int) -> list[tuple[str, dict[str, str], float]]:
    """Every labelled sample of serve's /metrics."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        text = r.read().decode()
    out = []
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m:
            labels = dict(re.findall(r'([a-z_]+)="([^"]*)"', m.group(2) or ""))
            out.append((m.group(1), labels, float(m.group(3))))
    return out


def total(samples: list[tuple[str, dict[str, str], float]], name: str, **want: str) -> float:
    """Sum of ``name``'s samples whose labels include ``want``."""
    return sum(v for n, lab, v in samples
               if n == name and all(lab.get(k) == x for k, x in want.items()))


def buckets(samples: list[tuple[str, dict[str, str], float]], name: str) -> dict[float, float]:
    """Cumulative bucket counts of a histogram, summed over its label sets."""
    out: dict[float, float] = {}
    for n, lab, v in samples:
        if n == name + "_bucket":
            le = float("inf") if lab["le"] == "+Inf" else float(lab["le"])
            out[le] = out.get(le, 0.0) + v
    return out


def quantile(q: float, before: dict[float, float], after: dict[float, float]) -> float:
    """histogram_quantile over the counts added between two scrapes (nan when none)."""
    les = sorted(after)
    counts = [after[le] - before.get(le, 0.0) for le in les]
    if not counts or counts[-1] <= 0:
        return float("nan")
    rank, prev_le, prev_c = q * counts[-1], 0.0, 0.0
    for le, c in zip(les, counts):
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_c) / max(c - prev_c, 1e-12)
        prev_le, prev_c = le, c
    return les[-1]


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid``, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds every core of the machine spent busy so far (/proc/stat: all but idle
    and iowait), whoever ran: beside this process's, it shows the other load."""
    vals = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(vals[:8]) - vals[3] - vals[4]) / os.sysconf("SC_CLK_TCK")


def stage_mean_ms(a: list[tuple[str, dict[str, str], float]],
                  b: list[tuple[str, dict[str, str], float]], stage: str) -> float:
    """Mean of one engine stage's latency (ms per batch) between two scrapes."""
    name = "restrav_stage_latency_seconds"
    n = total(b, name + "_count", stage=stage) - total(a, name + "_count", stage=stage)
    t = total(b, name + "_sum", stage=stage) - total(a, name + "_sum", stage=stage)
    return 1e3 * t / n if n else float("nan")


def file_streams(clip: Path, n: int) -> list[dict[str, Any]]:
    """``n`` streams playing ``clip`` in real time from the file, looping."""
    return [{"id": f"s{i}", "url": f"file://{clip}", "loop": True} for i in range(n)]


class RtspFeeds:
    """A loopback RTSP server with one real-time ffmpeg publisher per stream (mounts
    ``s0``, ``s1``...), started once and shared by every row."""

    def __init__(self, clip: Path, n: int, root: Path) -> None:
        self.server = RtspServer(root / "rtsp.log")
        self.server.start()
        self.publishers = [Publisher(clip, self.server.publish_url(f"s{i}"),
                                     root / f"publish-s{i}.log") for i in range(n)]
        for pub in self.publishers:
            pub.start()

    def streams(self, n: int) -> list[dict[str, Any]]:
        """The first ``n`` mounts as serve stream specs (RTP over UDP: rtsp-server-perl
        refuses interleaved TCP)."""
        return [{"id": f"s{i}", "url": self.server.read_url(f"s{i}"), "transport": "udp"}
                for i in range(n)]

    def stop(self) -> None:
        """Stop the publishers, then the server."""
        for pub in self.publishers:
            pub.kill()
        self.server.stop()


def serve_run(backend: str, streams: list[dict[str, Any]], model: Path, cache: Path,
              threads: int, root: Path, warmup: float, seconds: float) -> dict[str, Any]:
    """One ``restrav serve`` with ``streams`` (real time); figures over ``seconds``."""
    port = free_port()
    n = len(streams)
    cfg = {"serve": {"api": {"port": port, "token": TOKEN}, "streams": streams}}
    label = re.sub(r"[^A-Za-z0-9_.-]", "_", backend)
    cfg_path = root / f"serve-{label}-{n}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    t_start = time.perf_counter()
    with (root / f"serve-{label}-{n}.out").open("wb") as out, \
            (root / f"serve-{label}-{n}.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "serve", "--config", str(cfg_path)],
            cwd=REPO, env=env_for(backend, model, cache, threads), stdout=out, stderr=log,
        )
    try:
        if not wait_port(port, 600):
            sys.exit(f"serve did not start; see {root}")
        deadline = time.monotonic() + 900
        while not all(total(scrape(port), "restrav_stream_windows_scored_total", stream=f"s{i}")
                      for i in range(n)):
            if time.monotonic() > deadline or proc.poll() is not None:
                sys.exit(f"serve scored nothing; see {root}")
            time.sleep(1.0)
        ready = time.perf_counter() - t_start  # to every stream's first score
        time.sleep(warmup)
        a, t0 = scrape(port), time.perf_counter()
        cpu0, busy0 = proc_cpu_s(proc.pid), machine_busy_s()
        time.sleep(seconds)
        cpu1, busy1 = proc_cpu_s(proc.pid), machine_busy_s()
        b, el = scrape(port), time.perf_counter() - t0
        lat_a = buckets(a, "restrav_stream_e2e_latency_seconds")
        lat_b = buckets(b, "restrav_stream_e2e_latency_seconds")
        scored = total(b, "restrav_stream_windows_scored_total") - total(
            a, "restrav_stream_windows_scored_total")
        sampled = total(b, "restrav_stream_frames_sampled_total") - total(
            a, "restrav_stream_frames_sampled_total")
        skipped = total(b, "restrav_stream_windows_skipped_total") - total(
            a, "restrav_stream_windows_skipped_total")
        embedded = total(b, "restrav_engine_batch_size_sum") - total(
            a, "restrav_engine_batch_size_sum")
        batches = total(b, "restrav_engine_batch_size_count") - total(
            a, "restrav_engine_batch_size_count")
        return {
            "embedded_per_s": embedded / el, "batch_mean": embedded / max(batches, 1.0),
            "convert_ms": stage_mean_ms(a, b, "convert"), "embed_ms": stage_mean_ms(a, b, "embed"),
            "serve_cores": (cpu1 - cpu0) / el, "machine_cores": (busy1 - busy0) / el,
            "cpu_ms_per_sample": 1e3 * (cpu1 - cpu0) / max(embedded, 1.0),
            "backend": backend, "streams": n, "ready_s": ready,
            "sampled_hz": sampled / el / n, "scored_hz": scored / el / n,
            "skipped": skipped, "p50": quantile(0.5, lat_a, lat_b),
            "p95": quantile(0.95, lat_a, lat_b), "seconds": el,
            "capacity": total(b, "restrav_engine_capacity_samples_per_second"),
        }
    finally:
        end(proc, signal.SIGTERM)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fast", default="openvino", help="the fast backend (default openvino)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parts", default="queue,serve")
    ap.add_argument("--queue-clips", type=int, default=3)
    ap.add_argument("--clip-seconds", type=float, default=3.0)
    ap.add_argument("--streams", default="1,2")
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--source", choices=["file", "rtsp"], default="file",
                    help="serve's streams: local files or a loopback RTSP server")
    ap.add_argument("--backends", help="the rows' backends in turn (default: torch,FAST); a "
                    "backend may carry settings, e.g. openvino+RESTRAV_DECODE__THREADS=0")
    args = ap.parse_args()
    backends = (args.backends.split(",") if args.backends else ["torch", args.fast])
    root = Path(tempfile.mkdtemp(prefix="restrav-cpu-paths-"))
    print(f"CPU: {cpu_line()}")
    print(f"threads {args.threads}; backends {backends}; load at start {loadavg()}; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; logs in {root}")
    model, cache = random_backbone_dir("vits14"), root / "graphs"
    for fast in sorted({b.split("+")[0] for b in backends} - {"torch"}):
        backbone = load_backbone(str(model), "cpu")
        if fast == "auto":  # measured and cached as serve and the worker will read it
            t0 = time.perf_counter()
            choice = resolve_auto(backbone, 8, args.threads, cache)
            fps = ", ".join(f"{k} {v:.2f}" for k, v in choice.frames_per_s.items())
            print(f"auto picks {choice.runtime} {choice.mode} ({fps} frames/s at batch 8), "
                  f"decided in {time.perf_counter() - t0:.1f} s (before the clock)")
            continue
        _, info = build_runner(backbone, fast, "float32", args.threads, cache)
        print(f"{fast} graph built in {info.build_s:.1f} s (before the clock)")
    results: dict[str, Any] = {"cpu": cpu_line(), "queue": [], "serve": []}

    if "queue" in args.parts:
        clips = [make_720p(root / f"clip{i}.mp4", args.clip_seconds)
                 for i in range(args.queue_clips)]
        redis = RedisProcess(root)
        redis.start()
        try:
            rows = []
            for backend in backends:
                ready, el = queue_run(backend, clips, model, cache, args.threads, redis.url,
                                      root)
                results["queue"].append({"backend": backend, "ready_s": ready, "seconds": el})
                rows.append([backend, f"{ready:.1f}", f"{el:.1f}",
                             f"{len(clips) / el * 60:.2f}", loadavg()])
            base = results["queue"][0]["seconds"]
            for row, r in zip(rows, results["queue"]):
                row.insert(4, f"{base / r['seconds']:.2f}x")
        finally:
            redis.stop()
        print(f"\nqueue worker: {len(clips)} clips of {args.clip_seconds:g} s 720p25 H.264, "
              "whole clip at hop 1, one worker")
        print(table(["backend", "ready s", "clips s", "clips/min", "vs torch", "load"], rows))

    if "serve" in args.parts:
        clip = make_720p(root / "stream.mp4", 20)
        counts = [int(s) for s in args.streams.split(",")]
        feeds = RtspFeeds(clip, max(counts), root) if args.source == "rtsp" else None
        rows = []
        try:
            for n in counts:
                streams = feeds.streams(n) if feeds else file_streams(clip, n)
                for backend in backends:
                    r = serve_run(backend, streams, model, cache, args.threads, root,
                                  args.warmup, args.seconds)
                    results["serve"].append(r)
                    rows.append([backend, n, f"{r['ready_s']:.1f}", f"{r['sampled_hz']:.2f}",
                                 f"{r['scored_hz']:.2f}", f"{r['skipped']:.0f}",
                                 f"{r['p50']:.2f}", f"{r['p95']:.2f}",
                                 f"{r['capacity']:.1f}", f"{r['capacity'] / 11.5:.2f}",
                                 loadavg()])
        finally:
            if feeds:
                feeds.stop()
        how = ("from a loopback RTSP server (RTP/UDP), published in real time by ffmpeg"
               if feeds else "played in real time from a local file")
        print(f"\nrestrav serve: 720p25 streams {how}, {args.seconds:g} s "
              f"measured after {args.warmup:g} s; per stream (full rate 11.5 Hz at hop 1)")
        print(table(["backend", "streams", "ready s", "sampled Hz", "scored Hz",
                     "windows skipped", "p50 latency s", "p95 latency s",
                     "capacity samples/s", "streams at 11.5 Hz", "load"], rows))
        print("\nwhere the CPU went, same rows (serve's own CPU seconds from /proc, all its "
              "threads; the machine's busy cores, anyone's; the engine's mean stage times)")
        print(table(["backend", "streams", "samples embedded/s", "mean batch",
                     "convert ms/batch", "embed ms/batch", "serve CPU ms/sample",
                     "serve cores busy", "machine cores busy"],
                    [[r["backend"], r["streams"], f"{r['embedded_per_s']:.2f}",
                      f"{r['batch_mean']:.1f}", f"{r['convert_ms']:.1f}", f"{r['embed_ms']:.1f}",
                      f"{r['cpu_ms_per_sample']:.1f}", f"{r['serve_cores']:.2f}",
                      f"{r['machine_cores']:.2f}"] for r in results["serve"]]))
    print(f"\n(load at the end: {loadavg()})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
