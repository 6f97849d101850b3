"""Soak: 8 streams for RESTRAV_SOAK_S (default 120 s; 3600 for the 1 h soak) with churn.

A real rtsp-server-perl with 2 mounts fed by 2 ffmpeg publishers, plus 6 looping
file streams, all in one `restrav serve` (tiny model) writing to a real
redis-server. Churn: every CHURN_S one publisher is restarted (round robin:
its stream stalls, reconnects and resumes) and one file stream is removed and
added again through the control API. serve's RSS, threads, open descriptors and
(where CUDA and nvidia-smi exist) device memory are sampled every SAMPLE_S.
After a warm-up third, the last third must be flat against the middle one
(fds within 2, RSS within 5 % + 20 MiB; threads: the fewest of the last third within
2 of the middle third's median, and no sample more than
:data:`THREADS_PER_STREAM` a stream above the first, for a sample taken while a stream
reconnects counts the old connection's decode thread and the new one's).

Until 2026-12-07 the thread count climbed for minutes (36 -> 63 in 120 s; 56 after an
hour): every conversion thread's cached swscale context had its own team of slice
threads (PyAV's default, automatic threads), and the conversion pool started its threads
only as bursts needed them, so each reconnect's burst could add a thread and its team
(`gdb`: every extra thread a libavutil pool thread). Conversions now run swscale on one
thread and the pool starts all its threads at once (monitor.live.conversion), and a
120 s run held 23-24 threads from first sample to last. A leaked decoder per churn cycle
(68 -> 307 in 60 s) fails both checks. Figures printed and recorded in RELIABILITY.md.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import pytest
import redis

from monitor import keys
from tests.liveproc import Publisher, RtspServer, Serve, fast_source_settings, make_feed, wait_until
from tests.media import write_clip
from tests.redisproc import RedisProcess

SOAK_S = float(os.environ.get("RESTRAV_SOAK_S", "120"))
#: Where the samples (soak.csv) and their plot (soak.png) go; the test's tmp_path if unset.
SOAK_OUT = os.environ.get("RESTRAV_SOAK_OUT")

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(SOAK_S + 900)]
CHURN_S = 10.0
#: How far above the first sample serve's threads may be, per stream (module docstring).
THREADS_PER_STREAM = 1
STREAMS = 8
SAMPLE_S = 5.0


def device_mib(pid: int) -> float | None:
    """The process's GPU memory from nvidia-smi (None without one)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    out = subprocess.run(
        [exe, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
        capture_output=True, text=True, timeout=30, check=False,
    ).stdout
    for line in out.splitlines():
        p, _, mib = line.partition(",")
        if p.strip() == str(pid):
            return float(mib)
    return 0.0


def write_samples(out: Path, samples: list[tuple[float, float, int, int, float | None]]) -> None:
    """Write the samples as soak.csv and, where matplotlib is installed, soak.png."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "soak.csv").open("w") as f:
        f.write("t_s,rss_mib,threads,fds,device_mib\n")
        for t, rss, thr, fds, dev in samples:
            f.write(f"{t:.1f},{rss:.1f},{thr},{fds},{'' if dev is None else f'{dev:.0f}'}\n")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    t = [x[0] / 60 for x in samples]
    fig, (a1, a2) = plt.subplots(2, 1, sharex=True, figsize=(8, 5))
    a1.plot(t, [x[1] for x in samples], label="RSS (MiB)")
    a1.set_ylabel("MiB")
    a1.legend(loc="lower right")
    a2.plot(t, [x[2] for x in samples], label="threads")
    a2.plot(t, [x[3] for x in samples], label="open fds")
    a2.set_xlabel("minutes")
    a2.legend(loc="lower right")
    fig.suptitle(f"restrav serve soak: 8 streams, churn every {CHURN_S:.0f} s")
    fig.tight_layout()
    fig.savefig(out / "soak.png", dpi=100)
    plt.close(fig)


def test_soak_eight_streams_with_churn(tmp_path: Path, tiny_model_dir: Path) -> None:
    rp = RedisProcess(tmp_path)
    rp.start()
    srv = RtspServer(tmp_path / "rtsp.log")
    srv.start()
    feed = make_feed(tmp_path / "feed.mp4")
    clip = tmp_path / "loop.mp4"
    write_clip(clip, fps=25, n_frames=100, size=(64, 48))
    rtsp_ids = [f"cam{i}" for i in range(2)]
    file_ids = [f"file{i}" for i in range(6)]
    pubs = {m: Publisher(feed, srv.publish_url(m), tmp_path / f"{m}.log") for m in rtsp_ids}
    for p in pubs.values():
        p.start()
    streams = [{"id": m, "url": srv.read_url(m), "transport": "udp"} for m in rtsp_ids]
    streams += [{"id": f, "url": f"file://{clip}", "loop": True} for f in file_ids]
    serve = Serve(tmp_path, tiny_model_dir, {
        "streams": streams, "source": fast_source_settings(),
        "api": {"allow_file_sources": True},
        "engine": {"max_batch": 16, "max_wait_ms": 10},
    }, redis_url=rp.url)
    r = redis.Redis.from_url(rp.url, decode_responses=True)
    samples: list[tuple[float, float, int, int, float | None]] = []
    restarts = cycles = 0
    try:
        serve.start()
        wait_until(lambda: all(r.xlen(keys.stream_scores(s)) >= 1 for s in rtsp_ids + file_ids),
                   240, "every stream scoring")
        t0 = time.monotonic()
        next_churn = t0 + CHURN_S
        i = 0
        while (now := time.monotonic()) - t0 < SOAK_S:
            rc = serve.proc.poll() if serve.proc is not None else None
            assert rc is None, f"serve exited ({rc}) after {now - t0:.0f} s: {serve.log()[-4000:]}"
            samples.append((now - t0, serve.rss_mib(), serve.threads(), serve.fds(),
                            device_mib(serve.pid)))
            if now >= next_churn:
                m, f = rtsp_ids[i % len(rtsp_ids)], file_ids[i % len(file_ids)]
                pubs[m].kill()
                time.sleep(1.0)
                pubs[m].start()
                restarts += 1
                serve.api(f"/streams/{f}", method="DELETE")
                serve.api("/streams", method="POST",
                          body={"id": f, "url": f"file://{clip}", "loop": True})
                cycles += 1
                i += 1
                next_churn += CHURN_S
            time.sleep(SAMPLE_S)
        status = {s["id"]: s for s in serve.api("/streams")["streams"]}
        scored = {s: r.xlen(keys.stream_scores(s)) for s in rtsp_ids + file_ids}
        assert serve.stop() == 0
    finally:
        serve.kill()
        for p in pubs.values():
            p.kill()
        srv.stop()
        rp.stop()
    write_samples(Path(SOAK_OUT) if SOAK_OUT else tmp_path, samples)
    n = len(samples)
    assert n >= 6, "soak too short to judge: raise RESTRAV_SOAK_S"
    mid, last = samples[n // 3: 2 * n // 3], samples[2 * n // 3:]

    def fig(col: int) -> tuple[float, float, float, float]:
        return (samples[0][col], statistics.median(x[col] for x in mid),  # type: ignore[misc]
                statistics.median(x[col] for x in last), max(x[col] for x in samples))  # type: ignore[misc]

    thr_floor = min(x[2] for x in last)

    rss, thr, fds = fig(1), fig(2), fig(3)
    dev = [x[4] for x in samples if x[4] is not None]
    print(f"\nsoak {SOAK_S:.0f} s, 8 streams (2 RTSP, 6 looping files), {restarts} publisher "
          f"restarts, {cycles} remove/add cycles, {n} samples")
    for name, f in (("RSS MiB", rss), ("threads", thr), ("open fds", fds)):
        print(f"  {name}: first {f[0]:.0f}, median middle third {f[1]:.0f}, "
              f"median last third {f[2]:.0f}, max {f[3]:.0f}")
    print(f"  threads: fewest in the last third {thr_floor}")
    print("  device memory MiB: " + (f"first {dev[0]:.0f}, last {dev[-1]:.0f}, max {max(dev):.0f}"
                                      if dev else "n/a (no CUDA)"))
    print("  windows in Redis: " + ", ".join(f"{k} {v}" for k, v in scored.items()))
    print("  states at the end: " + ", ".join(f"{k} {v['state']}" for k, v in status.items()))
    thr_cap = thr[0] + THREADS_PER_STREAM * STREAMS
    print(f"  threads: cap {thr_cap:.0f} (first + {THREADS_PER_STREAM} a stream)")
    assert thr_floor <= thr[1] + 2, "threads keep rising"
    assert thr[3] <= thr_cap, "threads rose past the first sample's count"
    assert fds[2] <= fds[1] + 2
    assert rss[2] <= rss[1] * 1.05 + 20
    if dev:
        assert dev[-1] <= dev[len(dev) // 3] + 64
    assert all(v > 0 for v in scored.values())
    assert "Traceback" not in serve.log()
