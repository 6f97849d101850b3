"""The live data path at scale: N 720p25 H.264 streams through decode, sampling and the engine.

Each stream is a real H.264 file played in real time and looped (``FileSource``, the
service's own source), decoded on the CPU (PyAV) or on the GPU (NVDEC), sampled at
11.5 Hz by the live sampler and scored by the engine, as ``restrav serve`` does (the
stream manager's bookkeeping and the sinks are left out). For each stream count it
prints: the sustained sample rate per stream (11.5 Hz is full rate), windows skipped
by overload, p50/p95 latency from frame arrival to score, the process's CPU use (cores),
GPU and NVDEC utilisation (NVML, when present) and device memory. The scored rate is
below the sampled one by design: each loop of a clip restarts its clock, which the
service treats as a gap (the next window needs 24 new samples).

A second table measures CPU decode scaling: K concurrent 720p decoders with one
FFmpeg thread each against FFmpeg's own threading, aggregate frames/s.

Examples (see scripts/device_check.sh for the one-command GPU run):
  python -m bench.bench_gpu_path --device cpu --streams 1,2 --seconds 8 --tiny   # dry run
  python -m bench.bench_gpu_path --device cuda --decode nvdec --dtype float16-mixed \\
      --streams 64,128,256,320,384 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import av
import torch

from bench.common import machine, random_backbone_dir, table
from monitor.config import EngineSettings, ServeSourceSettings, StreamSpec
from monitor.core.backbone import load_backbone
from monitor.core.embed import Embedder
from monitor.live.batch import EngineSample
from monitor.live.engine import Engine
from monitor.media.decode import LiveVideo
from monitor.media.sampler import LiveSampler
from monitor.media.sources.base import SourceContext
from monitor.media.sources.file import FileSource
from monitor.types import SourceClosed, StreamScore

FULL_HZ = 11.5


def make_clips(directory: Path, n: int, seconds: float, size: tuple[int, int]) -> list[Path]:
    """``n`` different 720p25 H.264 clips (libx264 through PyAV, GOP 2 s, like a camera)."""
    w, h = size
    out = []
    for i in range(n):
        path = directory / f"cam{i}.mp4"
        out.append(path)
        if path.exists():
            continue
        with av.open(str(path), "w") as c:
            s = c.add_stream("libx264", rate=25)
            s.width, s.height, s.pix_fmt = w, h, "yuv420p"
            s.options = {"preset": "veryfast", "g": "50", "bf": "0", "crf": "26"}
            yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            for k in range(int(seconds * 25)):
                t = k / 25.0
                r = ((xx + 7 * k + 40 * i) % 256).to(torch.uint8)
                g = ((yy * 2 + 3 * k) % 256).to(torch.uint8)
                b = (((xx + yy) // 3 + 11 * i + int(20 * t)) % 256).to(torch.uint8)
                rgb = torch.stack([r, g, b], -1).numpy()
                for pkt in s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                    c.mux(pkt)
            for pkt in s.encode(None):
                c.mux(pkt)
    return out


class Probe:
    """Samples process CPU time and (with NVML) GPU and decoder utilisation in a thread."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.gpu: list[float] = []
        self.dec: list[float] = []
        self._stop = threading.Event()
        self._nvml: Any = None
        if device.type == "cuda":
            try:  # NVML is optional: figures are left blank without it
                import pynvml

                pynvml.nvmlInit()
                self._nvml = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
                self._pynvml = pynvml
            except (ImportError, OSError, RuntimeError):
                self._nvml = None
        self._cpu0 = sum(os.times()[:2])
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            if self._nvml is not None:
                nv = self._pynvml
                self.gpu.append(float(nv.nvmlDeviceGetUtilizationRates(self._nvml).gpu))
                self.dec.append(float(nv.nvmlDeviceGetDecoderUtilization(self._nvml)[0]))

    def stop(self) -> dict[str, str]:
        self._stop.set()
        self._thread.join()
        cores = (sum(os.times()[:2]) - self._cpu0) / (time.monotonic() - self._t0)
        mem = ""
        if self.device.type == "cuda":
            mem = f"{torch.cuda.max_memory_allocated(self.device) / 2**20:.0f}"
        return {
            "cpu_cores": f"{cores:.1f}",
            "gpu_pct": f"{statistics.mean(self.gpu):.0f}" if self.gpu else "-",
            "nvdec_pct": f"{statistics.mean(self.dec):.0f}" if self.dec else "-",
            "mem_mib": mem or "-",
        }


def skipped_windows(engine: Engine) -> float:
    """Windows skipped so far, all streams and reasons (the engine's counter)."""
    m = engine.metrics
    if m is None:
        return 0.0
    return sum(s.value for metric in m.windows_skipped.collect() for s in metric.samples
               if s.name.endswith("_total"))


async def run_streams(
    clips: list[Path], n: int, engine: Engine, seconds: float, warmup: float,
    src_settings: ServeSourceSettings,
) -> dict[str, Any]:
    """N real-time looped file streams into the engine; figures after ``warmup``."""
    latencies: list[float] = []
    scored = [0] * n
    measuring = False

    def on_score(i: int) -> Any:
        def cb(sc: StreamScore) -> None:
            if measuring:
                latencies.append(time.monotonic() - sc.arrival_s)
                scored[i] += 1
        return cb

    sources = []
    for i in range(n):
        engine.register(f"s{i}", on_score(i))
        clip = clips[i % len(clips)]
        ctx = SourceContext(url=str(clip), description=f"s{i}", settings=src_settings)
        sources.append(await FileSource.open(StreamSpec(id=f"s{i}", url=str(clip), loop=True),
                                             ctx))
    submitted = [0] * n
    skipped0 = skipped_windows(engine)

    async def feed(i: int) -> None:
        sampler: LiveSampler[Any] = LiveSampler(gap_tolerance_s=src_settings.gap_tolerance_s)
        src = sources[i]
        while True:
            try:
                frame = await src.recv()
            except SourceClosed:
                return
            _gap, ready = sampler.push(frame, frame.pts_s)
            for r in ready:
                ok = engine.submit(EngineSample(f"s{i}", r.segment, r.k, r.time_s, r.frame,
                                                frame.arrival_s, r.repeated))
                if measuring and ok:
                    submitted[i] += 1

    tasks = [asyncio.create_task(feed(i)) for i in range(n)]
    await asyncio.sleep(warmup)
    measuring = True
    probe = Probe(engine.device)
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    measuring = False
    elapsed = time.monotonic() - t0
    usage = probe.stop()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.gather(*(s.aclose() for s in sources))
    for i in range(n):
        engine.unregister(f"s{i}")
    lat = sorted(latencies) or [float("nan")]
    skipped = skipped_windows(engine)
    return {
        "streams": n,
        "hz": sum(submitted) / n / elapsed,
        "scored_hz": sum(scored) / n / elapsed,
        "skipped": skipped - skipped0,
        "p50_ms": 1000 * lat[len(lat) // 2],
        "p95_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.95))],
        **usage,
    }


def decode_scaling(clip: Path, counts: list[int], seconds: float) -> list[list[object]]:
    """Aggregate decode rate of K concurrent CPU decoders, FFmpeg threads 1 vs auto."""
    rows: list[list[object]] = []
    for threads in (1, 0):
        for k in counts:
            done = [0] * k
            stop = time.monotonic() + seconds

            def work(j: int, threads: int = threads, stop: float = stop,
                     done: list[int] = done) -> None:
                from monitor.media.decode import DecodeLimits

                while time.monotonic() < stop:
                    video = LiveVideo(str(clip), DecodeLimits(threads=threads))
                    try:
                        for _ in video.frames():
                            done[j] += 1
                            if time.monotonic() >= stop:
                                break
                    finally:
                        video.close()

            ts = [threading.Thread(target=work, args=(j,)) for j in range(k)]
            t0 = time.monotonic()
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            fps = sum(done) / (time.monotonic() - t0)
            rows.append(["1" if threads == 1 else "auto", k, f"{fps:.0f}",
                         f"{fps / 25:.1f}"])
    return rows


def pixel_path_cost(clip: Path, device: torch.device, batch: int) -> list[list[object]]:
    """Per-frame cost of making the model input from decoded frames: RGB on the CPU
    (swscale) + upload + resize, against 4:2:0 planes + upload + conversion and resize
    on the device; bytes uploaded per frame."""
    from monitor.core.embed import preprocess
    from monitor.media.colour import frame_planes, planes_to_pixels
    from monitor.media.decode import frame_to_rgb

    video = LiveVideo(str(clip))
    try:
        frames = [f for f, _ in zip((f for f, _ in video.frames()), range(batch))]
    finally:
        video.close()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def per_frame(fn: Any) -> float:
        fn()
        sync()
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 2.0:
            fn()
            reps += 1
        sync()
        return (time.perf_counter() - t0) / reps / len(frames) * 1000

    w, h = frames[0].width, frames[0].height
    rgb_ms = per_frame(lambda: preprocess([frame_to_rgb(f) for f in frames], 224, device))
    yuv_ms = per_frame(lambda: planes_to_pixels([frame_planes(f) for f in frames], 224, device))
    return [["rgb (CPU swscale, upload RGB)", f"{rgb_ms:.2f}", f"{w * h * 3 / 2**20:.2f}"],
            ["yuv (upload 4:2:0, convert on device)", f"{yuv_ms:.2f}",
             f"{w * h * 1.5 / 2**20:.2f}"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--streams", default="64,128,256,320,384")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured time per count")
    ap.add_argument("--warmup", type=float, default=8.0)
    ap.add_argument("--decode", choices=["cpu", "nvdec"], default=None,
                    help="default: nvdec on CUDA, cpu elsewhere")
    ap.add_argument("--pixel-path", choices=["auto", "rgb", "yuv"], default="auto")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--compile", default="off")
    ap.add_argument("--max-batch", type=int, default=128)
    ap.add_argument("--tiny", action="store_true", help="tiny model (dry runs on the CPU)")
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--clips", type=int, default=8, help="distinct clips the streams share")
    ap.add_argument("--clip-seconds", type=float, default=12.0,
                    help="clip length; each loop restarts the clock, a gap (no window for 2 s)")
    ap.add_argument("--decode-scaling", default="1,2,4,8,16",
                    help="CPU decoder counts for the scaling table ('' to skip)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    w, h = (int(v) for v in args.size.split("x"))
    decode = args.decode or ("nvdec" if dev.type == "cuda" else "cpu")
    tmp = Path(tempfile.gettempdir()) / f"restrav-gpu-path-{w}x{h}-{args.clip_seconds:g}s"
    tmp.mkdir(exist_ok=True)
    print(f"machine: {machine(dev)}; {os.cpu_count()} CPU cores")
    t0 = time.monotonic()
    clips = make_clips(tmp, args.clips, args.clip_seconds, (w, h))
    print(f"{len(clips)} clips {w}x{h} 25 fps H.264 ready in {time.monotonic() - t0:.0f} s")

    if args.decode_scaling:
        counts = [int(c) for c in args.decode_scaling.split(",")]
        rows = decode_scaling(clips[0], counts, 4.0)
        print(f"\nCPU decode scaling, {w}x{h} H.264 (aggregate over K concurrent decoders):\n")
        print(table(["FFmpeg threads each", "decoders K", "frames/s", "streams at 25 fps"], rows))

    rows = pixel_path_cost(clips[0], dev, 32)
    print(f"\nModel input from decoded {w}x{h} frames, batch 32, on {dev.type}:\n")
    print(table(["pixel path", "ms per frame", "MiB uploaded per frame"], rows))

    arch = "tiny" if args.tiny else "vits14"
    ref = str(random_backbone_dir(arch, seed=0))
    from prometheus_client import CollectorRegistry

    from monitor.metrics import StreamMetrics

    emb = Embedder(load_backbone(ref, dev, args.dtype), batch_size=args.max_batch,
                   compile=args.compile)
    settings = EngineSettings(max_batch=args.max_batch, queue_samples=100_000,
                              max_backlog_per_stream=48, pixel_path=args.pixel_path,
                              convert_threads=8)
    engine = Engine(emb, None, settings, StreamMetrics(CollectorRegistry()))
    src = ServeSourceSettings(decode_backend=decode, decode_device=dev.index or 0,
                              buffer_frames=16)
    print(f"\nmodel: random {arch} {args.dtype} compile={args.compile}; decode {decode}; "
          f"pixel path {engine.pixel_path}; max batch {args.max_batch}\n")

    async def sweep() -> list[dict[str, Any]]:
        engine.start(asyncio.get_running_loop())
        out = []
        for n in (int(c) for c in args.streams.split(",")):
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            r = await run_streams(clips, n, engine, args.seconds, args.warmup, src)
            print(f"  {n} streams: {r['hz']:.2f} Hz, skipped {r['skipped']:.0f}, "
                  f"p95 {r['p95_ms']:.0f} ms", flush=True)
            out.append(r)
        await engine.drain(30)
        return out

    results = asyncio.run(sweep())
    print()
    print(table(
        ["streams", "sampled Hz/stream", "scored Hz/stream", "windows skipped", "p50 ms",
         "p95 ms", "CPU cores", "GPU %", "NVDEC %", "peak device MiB"],
        [[r["streams"], f"{r['hz']:.2f}", f"{r['scored_hz']:.2f}", f"{r['skipped']:.0f}",
          f"{r['p50_ms']:.0f}", f"{r['p95_ms']:.0f}", r["cpu_cores"], r["gpu_pct"],
          r["nvdec_pct"], r["mem_mib"]] for r in results],
    ))
    full = [r["streams"] for r in results if r["hz"] >= FULL_HZ * 0.98 and r["skipped"] == 0
            and r["p95_ms"] <= 1000]
    print(f"\nfull rate (>= {FULL_HZ * 0.98:.2f} Hz, no window skipped, p95 <= 1 s) up to: "
          f"{max(full) if full else 'none'} streams")


if __name__ == "__main__":
    main()
