"""Benchmark evidence retention and thumbnails; prints markdown tables (record them in
BENCHMARKS.md).

Three measurements, in one run:

1. Memory: S streams (8, 64, 256 by default) each offer ``frames_per_stream`` sampled
   frames to the real capture threads (one swscale pass to ``frame_width``, Pillow JPEG)
   with the default ``serve.evidence`` and ``serve.ui`` settings (thumbnails on); the
   bytes retained per stream and in all, thumbnails, frames refused at the
   ``memory_bytes`` bound.
2. Capture throughput: 720p frames pushed through :class:`FrameCapture` as fast as it
   takes them, for the capture path before this change (one thread, swscale
   ``BILINEAR``) and after (``AREA``; 1, 2 and 4 threads): frames a second and the
   720p streams at 11.5 Hz that path keeps up with. The configurations alternate
   ``--repeats`` times; mean and spread are printed.
3. Scoring with evidence on vs off: the threaded engine (tiny random DINOv2 by default,
   CPU) fed as fast as it accepts by S streams for ``--seconds``; windows scored per
   second with nothing kept (``off``), with thumbnails only (``thumbs``: serve's
   default), with every sample's frame retained but no alert (``frames``: evidence on,
   the steady state), and with a record written for every window as well (``all``: the
   worst case, an alert a window) into a folder bounded to a few records (retention
   deletes the oldest all along). The modes alternate ``--repeats`` times in this one
   process (same load), then mean and standard deviation per mode are printed, with the
   load average before and after.

Frames are the real clip ``real__inference__example_video.mp4`` (shared clips; else a
synthetic pattern) decoded by PyAV, scaled to 1280x720 yuv420p for sections 1-2 (a
camera's size; what is kept is 240 px wide whatever the input) and kept at its own 426x240
for the scoring section (so that the CPU engine scores windows at all in a short run).

Example:
  python -m bench.bench_evidence --streams 8,64,256 --seconds 10 --repeats 4
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch

from monitor.config import EngineSettings, EvidenceSettings, UiSettings
from monitor.core.backbone import load_backbone
from monitor.core.embed import Embedder
from monitor.live.batch import EngineSample
from monitor.live.engine import Engine
from monitor.live.evidence.capture import FrameCapture
from monitor.live.evidence.frames import FrameStore
from monitor.live.evidence.recorder import EvidenceRecorder
from monitor.media.decode import frame_to_small_rgb
from monitor.types import SAMPLE_INTERVAL_S, WINDOW_SAMPLES, StreamScore

from .bench_stream import AVFrame
from .common import random_backbone_dir

CLIP = Path("/work/shared/clips/real__inference__example_video.mp4")


class CamFrame(AVFrame):
    """A decoded yuv420p frame as a live source hands it over (rgb, planes, small_rgb);
    ``interpolation`` is swscale's filter (``AREA`` as serve does; ``BILINEAR`` before)."""

    interpolation = "AREA"

    def small_rgb(self, width: int, scaler: Any = None) -> np.ndarray:
        return frame_to_small_rgb(self.frame, width, scaler, self.interpolation)


class BilinearFrame(CamFrame):
    """The capture path before this change: swscale's default ``BILINEAR``."""

    interpolation = "BILINEAR"


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
    rec = EvidenceRecorder(s, ui=UiSettings())  # the default engine backlog: 56 frames
    assert rec.store is not None and rec.thumbs is not None
    rec.capture.start()
    for i in range(streams):
        rec.watch(f"cam{i}")
    for k in range(rec.keep):
        for i in range(streams):
            f = frames[(k + i * 7) % len(frames)]
            item = (f"cam{i}", 0, k, k * SAMPLE_INTERVAL_S, time.time(), False, f, True,
                    k == rec.keep - 1)
            while not rec.capture.put(item):
                time.sleep(0.001)  # a full queue: wait (here every frame must be kept)
    while not rec.capture.idle():
        time.sleep(0.01)
    rec.capture.stop()
    per = [rec.store.bytes_of(f"cam{i}") for i in range(streams)]
    return {"total_mib": rec.store.total_bytes / 2**20,
            "per_stream_kib": float(np.mean(per)) / 1024,
            "thumbs_kib": rec.thumbs.total_bytes / 1024,
            "refused": float(rec.capture.dropped.get("memory_full", 0))}


CAPTURE_PATHS = (("before: 1 thread, BILINEAR", 1, BilinearFrame),
                 ("1 thread, AREA", 1, CamFrame), ("2 threads, AREA", 2, CamFrame),
                 ("4 threads, AREA", 4, CamFrame))


def bench_capture(threads: int, frames: list[CamFrame], n: int) -> float:
    """Section 2: frames a second one capture path compresses (64 streams, evidence)."""
    store = FrameStore(keep=8, stream_bytes=2**20, memory_bytes=2**30)
    cap = FrameCapture(store, 240, 75, queue_max=256, threads=threads)
    sids = [f"cam{i}" for i in range(64)]
    for sid in sids:
        store.open(sid)
    cap.start()
    t0 = time.perf_counter()
    for j in range(n):
        sid = sids[j % len(sids)]
        item = (sid, 0, j, j * SAMPLE_INTERVAL_S, 0.0, False, frames[j % len(frames)], True,
                False)
        while not cap.put(item):
            time.sleep(0.0005)
    while not cap.idle():
        time.sleep(0.002)
    elapsed = time.perf_counter() - t0
    cap.stop()
    return n / elapsed


async def bench_scoring(emb: Embedder, frames: list[CamFrame], streams: int, seconds: float,
                        mode: str, tmp: Path) -> dict[str, Any]:
    """Section 2: windows scored per second, streams fed as fast as the engine accepts."""
    engine = Engine(emb, None, EngineSettings(max_batch=16, hop=4,
                                              max_backlog_per_stream=WINDOW_SAMPLES * 2))
    rec: EvidenceRecorder | None = None
    if mode == "thumbs":
        rec = EvidenceRecorder(EvidenceSettings(), ui=UiSettings(),
                               engine_backlog=WINDOW_SAMPLES * 2)
        rec.start()
    elif mode != "off":
        folder = tmp / f"ev{streams}-{time.monotonic_ns()}"
        rec = EvidenceRecorder(EvidenceSettings(dir=folder, low_threshold=0.0,
                                                max_disk_bytes=2 * 2**20, frames_wait_s=1.0),
                               engine_backlog=WINDOW_SAMPLES * 2, ui=UiSettings())
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
        out["frames_dropped"] = float(sum(rec.capture.dropped.values()))
        w = rec.writer
        if w is not None:
            out.update(records=float(w.written), deleted=float(sum(w.deleted.values())),
                       disk_mib=w.disk_bytes / 2**20)
            out["dropped"] = ", ".join(f"{k} {v}" for k, v in sorted(w.dropped.items())) or "0"
    return out


def spread(xs: list[float]) -> str:
    """``mean ± sd (min-max)`` of ``xs``."""
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.1f} ± {sd:.1f} ({min(xs):.1f}-{max(xs):.1f})"


def load() -> str:
    """The 1/5/15-minute load averages."""
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    """Parse the options, run the three sections, print the tables."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--streams", default="8,64,256", help="memory: comma-separated counts")
    p.add_argument("--scoring-streams", type=int, default=8, help="scoring: streams")
    p.add_argument("--seconds", type=float, default=10.0, help="scoring: seconds per run")
    p.add_argument("--repeats", type=int, default=4, help="capture, scoring: alternations")
    p.add_argument("--capture-frames", type=int, default=600, help="capture: frames a run")
    p.add_argument("--scoring-only", action="store_true",
                   help="skip the memory and capture sections")
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
    print(f"load average at start: {load()}\n")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        s, ui = EvidenceSettings(), UiSettings()
        if not a.scoring_only:
            print(f"Memory: defaults (frame_width {s.frame_width}, jpeg_quality {s.jpeg_quality}, "
                  f"56 frames a stream (24 + engine backlog 24 + 8), "
                  f"stream_bytes {s.stream_bytes // 1024} KiB, memory_bytes "
                  f"{s.memory_bytes // 2**20} MiB; thumbnails: the newest kept frame, "
                  f"thumbnail_memory_bytes {ui.thumbnail_memory_bytes // 2**20} MiB), "
                  "1280x720 input\n")
            print("| streams | retained MiB | per stream KiB | thumbnails KiB "
                  "| refused (memory_bytes) |")
            print("|---:|---:|---:|---:|---:|")
            for n in (int(x) for x in a.streams.split(",")):
                r = bench_memory(n, frames, tmp)
                print(f"| {n} | {r['total_mib']:.1f} | {r['per_stream_kib']:.0f} "
                      f"| {r['thumbs_kib']:.0f} | {r['refused']:.0f} |")

            print(f"\nCapture throughput: {a.capture_frames} frames of 1280x720 yuv420p a run "
                  f"(64 streams), to 240 px wide + JPEG q75; the paths alternate {a.repeats} "
                  "times\n")
            fps: dict[str, list[float]] = {name: [] for name, _, _ in CAPTURE_PATHS}
            for _ in range(a.repeats):
                for name, threads, kind in CAPTURE_PATHS:
                    fps[name].append(bench_capture(threads, [kind(f.frame) for f in frames],
                                                   a.capture_frames))
            print("| capture path | frames/s: mean ± sd (min-max) | ms a frame | 720p streams "
                  "at 11.5 Hz kept up with |")
            print("|---|---:|---:|---:|")
            for name, xs in fps.items():
                mean = statistics.mean(xs)
                print(f"| {name} | {spread(xs)} | {1000 / mean:.2f} | {mean / 11.5:.0f} |")
            print(f"\nload average after the capture runs: {load()}")

        emb = Embedder(load_backbone(str(random_backbone_dir("tiny")), "cpu"), batch_size=16)
        small = camera_frames(96, 426, 240)
        modes = ("off", "thumbs", "frames", "all")
        print(f"\nScoring: {a.scoring_streams} streams of 426x240 fed as fast as accepted, "
              f"hop 4, {a.seconds:.0f} s a run, tiny random DINOv2 on the CPU; modes "
              f"alternate {a.repeats} times: off (nothing kept), thumbs (thumbnails only: "
              "the default), frames (evidence on: every sample retained), all (a record "
              "written for every window as well; 2 MiB folder bound)\n")
        print("| run | mode | windows/s | records | deleted | records dropped "
              "| frames dropped |")
        print("|---:|---|---:|---:|---:|---:|---:|")
        wps: dict[str, list[float]] = {m: [] for m in modes}
        # one unrecorded run first: the first run pays for the model's warm-up
        asyncio.run(bench_scoring(emb, small, a.scoring_streams, a.seconds, "off", tmp))
        for run, mode in enumerate(modes * a.repeats, start=1):
            r = asyncio.run(bench_scoring(emb, small, a.scoring_streams, a.seconds, mode, tmp))
            wps[mode].append(r["windows_per_s"])
            if "records" in r:
                extra = (f"| {r['records']:.0f} | {r['deleted']:.0f} | {r['dropped']} "
                         f"| {r['frames_dropped']:.0f} |")
            elif "frames_dropped" in r:
                extra = f"| | | | {r['frames_dropped']:.0f} |"
            else:
                extra = "| | | | |"
            print(f"| {run} | {mode} | {r['windows_per_s']:.1f} {extra}")
        print("\n| mode | windows/s: mean ± sd (min-max) | vs off |")
        print("|---|---:|---:|")
        off = statistics.mean(wps["off"]) or float("nan")
        for mode in modes:
            print(f"| {mode} | {spread(wps[mode])} | "
                  f"{statistics.mean(wps[mode]) / off:.2f} |")
        print(f"\nload average at the end: {load()}")


if __name__ == "__main__":
    main()
