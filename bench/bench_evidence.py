"""Benchmark evidence retention; prints markdown tables (record them in BENCHMARKS.md).

Two measurements, side by side in one run:

1. Memory: S streams (8, 64, 256 by default) each offer ``frames_per_stream`` sampled
   frames to the real capture thread (one swscale pass to ``frame_width``, Pillow JPEG)
   with the default ``serve.evidence`` settings; the bytes retained per stream and in
   all, frames refused at the ``memory_bytes`` bound, and the capture cost per frame.
2. Scoring with evidence on vs off: the threaded engine (tiny random DINOv2 by default,
   CPU) fed as fast as it accepts by S streams for ``--seconds``; windows scored per
   second with evidence ``off``, with every sample's frame retained but no alert
   (``frames``: the steady state), and with a record written for every window as well
   (``all``: the worst case, an alert a window) into a folder bounded to a few records
   (retention deletes the oldest all along). The three modes alternate twice so the
   noise of a shared machine shows.

Frames are the real clip ``real__inference__example_video.mp4`` (shared clips; else a
synthetic pattern) decoded by PyAV, scaled to 1280x720 yuv420p for the memory section (a
camera's size; what is kept is 240 px wide whatever the input) and kept at its own 426x240
for the scoring section (so that the CPU engine scores windows at all in a short run).

Example:
  python -m bench.bench_evidence --streams 8,64,256 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch

from monitor.config import EngineSettings, EvidenceSettings
from monitor.core.backbone import load_backbone
from monitor.core.embed import Embedder
from monitor.live.batch import EngineSample
from monitor.live.engine import Engine
from monitor.live.evidence.recorder import EvidenceRecorder
from monitor.media.decode import frame_to_small_rgb
from monitor.types import SAMPLE_INTERVAL_S, WINDOW_SAMPLES, StreamScore

from .bench_stream import AVFrame
from .common import random_backbone_dir

CLIP = Path("/work/shared/clips/real__inference__example_video.mp4")


class CamFrame(AVFrame):
    """A decoded yuv420p frame as a live source hands it over (rgb, planes, small_rgb)."""

    def small_rgb(self, width: int, scaler: Any = None) -> np.ndarray:
        return frame_to_small_rgb(self.frame, width, scaler)


def camera_frames(n: int, width: int, height: int) -> list[CamFrame]:
    """``n`` distinct yuv420p frames of ``width`` x ``height`` (the real clip when present)."""
    out: list[CamFrame] = []
    if CLIP.is_file():
        with av.open(str(CLIP)) as c:
            for f in c.decode(video=0):
                out.append(CamFrame(f.reformat(width=width, height=height, format="yuv420p")))
                if len(out) == n:
                    break
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    while len(out) < n:
        img = np.roll(base, shift=(len(out) * 5, len(out) * 3), axis=(0, 1))
        out.append(CamFrame(av.VideoFrame.from_ndarray(img, format="rgb24")
                            .reformat(format="yuv420p")))
    return out


def bench_memory(streams: int, frames: list[CamFrame], tmp: Path) -> dict[str, float]:
    """Section 1: retained bytes after every stream offered a full ring of frames."""
    s = EvidenceSettings(dir=tmp / f"mem{streams}")
    rec = EvidenceRecorder(s)  # the default engine backlog (24): 56 frames a stream
    rec.capture.start()
    for i in range(streams):
        rec.watch(f"cam{i}")
    t0 = time.perf_counter()
    n = 0
    for k in range(rec.keep):
        for i in range(streams):
            f = frames[(k + i * 7) % len(frames)]
            while not rec.capture.put((f"cam{i}", 0, k, k * SAMPLE_INTERVAL_S, time.time(),
                                       False, f)):
                time.sleep(0.001)  # a full queue: wait (here every frame must be kept)
            n += 1
    while not rec.capture.idle():
        time.sleep(0.01)
    elapsed = time.perf_counter() - t0
    rec.capture.stop()
    per = [rec.store.bytes_of(f"cam{i}") for i in range(streams)]
    return {"total_mib": rec.store.total_bytes / 2**20,
            "per_stream_kib": float(np.mean(per)) / 1024,
            "refused": float(rec.capture.dropped.get("memory_full", 0)),
            "ms_per_frame": elapsed / n * 1000}


async def bench_scoring(emb: Embedder, frames: list[CamFrame], streams: int, seconds: float,
                        mode: str, tmp: Path) -> dict[str, Any]:
    """Section 2: windows scored per second, streams fed as fast as the engine accepts."""
    engine = Engine(emb, None, EngineSettings(max_batch=16, hop=4,
                                              max_backlog_per_stream=WINDOW_SAMPLES * 2))
    rec: EvidenceRecorder | None = None
    if mode != "off":
        folder = tmp / f"ev{streams}-{time.monotonic_ns()}"
        rec = EvidenceRecorder(EvidenceSettings(dir=folder, low_threshold=0.0,
                                                max_disk_bytes=2 * 2**20, frames_wait_s=1.0),
                               engine_backlog=WINDOW_SAMPLES * 2)
        rec.start()
    scored = [0]

    def on_score(sc: StreamScore) -> None:
        scored[0] += 1
        if rec is not None:  # p_ai is None (no classifier): "all" asks as an alert start would
            rec.on_score(sc, alert_started=mode == "all")

    for i in range(streams):
        engine.register(f"cam{i}", on_score, 4)
        if rec is not None:
            rec.watch(f"cam{i}")
    engine.start(asyncio.get_running_loop())
    t0 = time.monotonic()
    k = [0] * streams
    while time.monotonic() - t0 < seconds:
        for i in range(streams):
            f = frames[(k[i] + i * 7) % len(frames)]
            sample = EngineSample(f"cam{i}", 0, k[i], k[i] * SAMPLE_INTERVAL_S, f,
                                  time.monotonic())
            if engine.submit(sample):
                if rec is not None:
                    rec.on_sample(f"cam{i}", 0, k[i], sample.time_s, False, f)
                k[i] += 1
        await asyncio.sleep(0.002)
    n0, elapsed = scored[0], time.monotonic() - t0
    await engine.drain(30)
    out: dict[str, Any] = {"windows_per_s": n0 / elapsed}
    if rec is not None:
        await asyncio.to_thread(rec.stop, 20)
        w = rec.writer
        out.update(records=float(w.written), deleted=float(sum(w.deleted.values())),
                   disk_mib=w.disk_bytes / 2**20,
                   frames_dropped=float(sum(rec.capture.dropped.values())))
        out["dropped"] = ", ".join(f"{k} {v}" for k, v in sorted(w.dropped.items())) or "0"
    return out


def main() -> None:
    """Parse the options, run both sections, print the tables."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", default="8,64,256", help="memory: comma-separated counts")
    p.add_argument("--scoring-streams", type=int, default=8, help="scoring: streams")
    p.add_argument("--seconds", type=float, default=20.0, help="scoring: seconds per run")
    a = p.parse_args()
    torch.set_num_threads(1)
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines()
                  if ln.startswith("Model name")), platform.processor())
    flags = next((ln.split(":", 1)[1].strip() for ln in cpu.splitlines()
                  if ln.startswith("Flags")), "")
    simd = " ".join(f for f in flags.split() if f.startswith(("avx", "sse4", "fma")))
    print(f"machine: {model}, {platform.machine()}, {os.cpu_count()} CPUs visible, torch "
          f"on 1 thread; flags: {simd}; python {platform.python_version()}\n")
    frames = camera_frames(96, 1280, 720)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        s = EvidenceSettings()
        print(f"Memory: defaults (frame_width {s.frame_width}, jpeg_quality {s.jpeg_quality}, "
              f"56 frames a stream (24 + engine backlog 24 + 8), "
              f"stream_bytes {s.stream_bytes // 1024} "
              f"KiB, memory_bytes {s.memory_bytes // 2**20} MiB), 1280x720 input\n")
        print("| streams | retained MiB | per stream KiB | refused (memory_bytes) "
              "| capture ms/frame |")
        print("|---:|---:|---:|---:|---:|")
        for n in (int(x) for x in a.streams.split(",")):
            r = bench_memory(n, frames, tmp)
            print(f"| {n} | {r['total_mib']:.1f} | {r['per_stream_kib']:.0f} "
                  f"| {r['refused']:.0f} | {r['ms_per_frame']:.2f} |")
        emb = Embedder(load_backbone(str(random_backbone_dir("tiny")), "cpu"), batch_size=16)
        small = camera_frames(96, 426, 240)
        print(f"\nScoring: {a.scoring_streams} streams of 426x240 fed as fast as accepted, hop 4, "
              f"{a.seconds:.0f} s a run, tiny random DINOv2 on the CPU; frames = every "
              "sample retained (frames), and a record written for every window as well (all; 2 MiB "
              "folder bound)\n")
        print("| run | evidence | windows/s | records | deleted | records dropped "
              "| frames dropped |")
        print("|---:|---|---:|---:|---:|---:|---:|")
        for run, mode in enumerate(("off", "frames", "all") * 2, start=1):
            r = asyncio.run(bench_scoring(emb, small, a.scoring_streams, a.seconds, mode, tmp))
            extra = (f"| {r['records']:.0f} | {r['deleted']:.0f} | {r['dropped']} "
                     f"| {r['frames_dropped']:.0f} |" if mode != "off" else "| | | | |")
            print(f"| {run} | {mode} | {r['windows_per_s']:.1f} {extra}")


if __name__ == "__main__":
    main()
