"""Hundreds of live streams through the real `serve`, without a GPU. Prints tables.

The real service (``workers.serve_cmd.serve``: stream tasks, sampler, engine, rings,
the bundled classifier, the Redis sink on a private redis-server, the live feed, the
metrics, the HTTP API) runs in one process per row. Only what needs a GPU is a
stand-in (:mod:`bench.standin`): the backbone sleeps ``a + b * n`` per batch (the
H100's forward pass in float32 or bfloat16, ``--model``; ``--fixed-ms`` and
``--per-sample-ms`` override), and each stream is a synthetic source handing over
tiny frames at ``--fps`` (25) with pts, optional jitter and bursts. Decode is left
out (NVDEC's share of the host is a few API calls per frame; see BENCHMARKS.md).

Per row, over ``--seconds`` after ``--warmup``:

* offered Hz per stream (samples the sampler made) and sustained Hz per stream
  (windows that reached Redis in the period, hop 1: one per sample once a window is
  full; counted over up to 48 streams spread over all of them);
* samples embedded per second; windows skipped (overload and yield);
* p50 / p95 latency: a window's last frame's arrival to its entry in Redis (the
  entry id is the server's clock), over the windows written in the period by up to 48
  streams spread over all of them;
* CPU per sample: process CPU time (all threads) / samples embedded, and the share of
  the event loop, the device thread and the host thread (``/proc/self/task``); of it,
  the share spent in the kernel (system time: syscalls, wake-ups); and the stand-in
  sources' own part: the thread time of the decoder clock's ticks (the
  frames made and put into the streams' buffers, which real decode threads would do
  outside the loop), measured in the same row; the control plane's own cost is the
  first less the second (decode is left out of the simulation; real decode threads
  add theirs);
* event-loop lag (a 10 ms ticker: p99, max); Redis commands per second (``INFO
  commandstats`` delta, the bench's own INFO excluded); RSS at the end;
* wake-ups per second per thread (voluntary context switches: each sleep of a thread
  ends in one, and on a virtual machine one costs tens of µs of the thread's CPU;
  ``bench_frames --wake-probe``).

``--busy-cores 0,2`` alternates rows without and with two SCHED_IDLE spinners that
keep the vCPUs from halting (a diagnostic: on this kind of VM a halted vCPU makes the
next wake-up cost tens of microseconds of the woken thread's CPU). With several rows of
one kind (``--repeat``) the medians are printed under the table.

``--compare BEFORE,AFTER`` runs every row for two commits in turn (``--repeat`` times),
the before/after of one change in the same conditions. ``--profile N`` runs one row
of N streams under py-spy (when installed) and prints where the time goes, per thread.
Each row runs in a fresh process; the machine's load
average is printed beside it (the box is shared: CPU per sample moves less with
load than the wall rates do).

Example: ``python -m bench.bench_scale`` (about 6 x 50 s),
``python -m bench.bench_scale --streams 320 --profile 320``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_overload import cpu_model, lag_ticker  # noqa: E402
from bench.standin import (  # noqa: E402
    H100_MODELS,
    StandInEmbedder,
    SyntheticSource,
    decoder_clock,
    register_synthetic_source,
)
from tests.redisproc import RedisProcess, free_port  # noqa: E402

TOKEN = "bench-scale-token"


def cpu_flags() -> str:
    """The vector flags lscpu reports (the machine the figures came from)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "?"
    flags = next((ln.split(":", 1)[1].split() for ln in out.splitlines()
                  if ln.startswith("Flags")), [])
    keep = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")
    return " ".join(f for f in flags if f in keep)


def _thread_cpu() -> dict[str, float]:
    """CPU seconds so far per Python thread name (main: the event loop), others summed."""
    out: Counter[str] = Counter()
    tick = os.sysconf("SC_CLK_TCK")
    names = {t.native_id: t.name for t in threading.enumerate()}
    for task in Path("/proc/self/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / tick
        name = names.get(int(task.name), "other")
        out[name if name in ("MainThread", "restrav-device", "restrav-host") else "other"] += cpu
    return dict(out)


def _thread_sleeps() -> dict[str, int]:
    """Voluntary context switches so far (a thread's sleeps: each ends in a wake-up) per
    Python thread name, as :func:`_thread_cpu` groups them."""
    out: Counter[str] = Counter()
    names = {t.native_id: t.name for t in threading.enumerate()}
    for task in Path("/proc/self/task").iterdir():
        try:
            status = (task / "status").read_text()
        except OSError:
            continue
        n = next((int(ln.split()[1]) for ln in status.splitlines()
                  if ln.startswith("voluntary_ctxt_switches")), 0)
        name = names.get(int(task.name), "other")
        out[name if name in ("MainThread", "restrav-device", "restrav-host") else "other"] += n
    return dict(out)


def _rss_mib() -> tuple[float, float]:
    info = dict(ln.split(":", 1) for ln in Path("/proc/self/status").read_text().splitlines()
                if ":" in ln)
    return (int(info["VmRSS"].split()[0]) / 1024, int(info["VmHWM"].split()[0]) / 1024)


def _scrape(text: str) -> dict[str, float]:
    """Sums over label sets of the counters the table needs, from /metrics text. Only
    their lines are parsed: parsing the whole text of 300 streams (11,000 lines) took the
    event loop, which this process shares with serve, 300 ms, and the streams dropped
    frames and skipped windows in the measured period because of it."""
    from prometheus_client.parser import text_string_to_metric_families

    want = {"restrav_stream_frames_sampled_total", "restrav_stream_windows_skipped_total",
            "restrav_stream_windows_scored_total", "restrav_engine_batch_size_sum",
            "restrav_engine_batch_size_count", "restrav_stream_frames_decoded_total"}
    prefixes = (*want, "restrav_stream_frames_dropped_total")
    lines = "\n".join(ln for ln in text.splitlines() if ln.startswith(prefixes))
    out: Counter[str] = Counter()
    for fam in text_string_to_metric_families(lines + "\n"):
        for s in fam.samples:
            if s.name in want:
                out[s.name] += s.value
            if s.name == "restrav_stream_frames_dropped_total":
                out[f"dropped:{s.labels.get('reason')}"] += s.value
    return dict(out)


async def _commands(client: Any) -> int:
    stats = await client.info("commandstats")
    total = 0
    for k, v in stats.items():
        name = k.removeprefix("cmdstat_")
        if name not in ("info",) and isinstance(v, dict):
            total += int(v.get("calls", 0))
    return total


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def run_point(args: argparse.Namespace) -> dict[str, Any]:
    """One row: serve with ``args.point`` synthetic streams; the measured figures."""
    import aiohttp
    import redis.asyncio as aioredis
    from pydantic import SecretStr

    from monitor.config import (
        ApiSettings,
        EngineSettings,
        RedisSettings,
        ServeSettings,
        Settings,
        StreamSpec,
    )
    from workers.serve_cmd import serve

    fixed_s, per_s = H100_MODELS[args.model]
    if args.fixed_ms is not None:
        fixed_s = args.fixed_ms / 1000
    if args.per_sample_ms is not None:
        per_s = args.per_sample_ms / 1000
    n = args.point
    query = (f"fps={args.fps:g}&size=16&jitter_ms={args.jitter_ms:g}"
             f"&burst_every_s={args.burst_every_s:g}&burst_ms={args.burst_ms:g}"
             f"&delivery={args.delivery}")
    streams = tuple(StreamSpec(id=f"s{i}", url=f"synth://s{i}?{query}") for i in range(n))
    port = free_port()
    engine = {} if args.convert_threads is None else {"convert_threads": args.convert_threads}
    settings = Settings(
        redis=RedisSettings(url=SecretStr(args.redis)),
        serve=ServeSettings(streams=streams, persist_streams=False,
                            api=ApiSettings(port=port, token=SecretStr(TOKEN)),
                            engine=EngineSettings(**engine)),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings, stop, StandInEmbedder(fixed_s, per_s, args.dim)))
    lags: list[float] = []
    tick = asyncio.create_task(lag_ticker(lags, stop))
    rc = aioredis.from_url(args.redis)
    url = f"http://127.0.0.1:{port}/metrics"
    async with aiohttp.ClientSession() as http:
        await asyncio.sleep(args.warmup)
        if task.done():
            task.result()
        if args.switch_interval_ms is not None:  # over what serve set at its start
            sys.setswitchinterval(args.switch_interval_ms / 1000)
        m0 = _scrape(await (await http.get(url)).text())
        # the one the streams' sources were opened with
        clock = decoder_clock(threaded=args.delivery == "thread")
        src0 = clock.cpu_s
        c0, cpu0, th0 = await _commands(rc), time.process_time(), _thread_cpu()
        times0 = os.times()
        sl0 = _thread_sleeps()
        lags.clear()
        print("measuring", flush=True)  # a profiler attaches now (--profile)
        t0w, t0 = time.time(), time.monotonic()
        await asyncio.sleep(args.seconds)
        elapsed = time.monotonic() - t0
        t1w = time.time()
        cpu1, th1 = time.process_time(), _thread_cpu()
        times1 = os.times()
        sl1 = _thread_sleeps()
        src1 = clock.cpu_s
        c1 = await _commands(rc)
        m1 = _scrape(await (await http.get(url)).text())
    rss, hwm = _rss_mib()
    lag = [x * 1000 for x in lags]
    # the windows written in the period (of at most 48 streams spread over all of them;
    # all stored by now: an entry's id is the time it was written): entry id (ms, the
    # server's clock) - wall_end
    lat: list[float] = []
    lo, hi = int(t0w * 1000), int(t1w * 1000)
    sampled = range(0, n, max(1, n // 48))
    for i in sampled:
        for eid, f in await rc.xrange(f"restrav:{{s{i}}}:scores", min=lo, max=hi):
            lat.append(int(eid.split(b"-")[0]) / 1000 - float(f[b"wall_end"]))
    d = {k: m1.get(k, 0.0) - m0.get(k, 0.0) for k in m1}
    embedded = d.get("restrav_engine_batch_size_sum", 0.0)
    cpu = {k: th1.get(k, 0.0) - th0.get(k, 0.0) for k in th1}
    result = {
        "streams": n, "seconds": elapsed,
        "offered_hz": d.get("restrav_stream_frames_sampled_total", 0.0) / elapsed / n,
        "sustained_hz": len(lat) / elapsed / len(sampled),
        "frames_per_s": d.get("restrav_stream_frames_decoded_total", 0.0) / elapsed,
        "embedded_sps": embedded / elapsed,
        "batch_mean": embedded / max(1.0, d.get("restrav_engine_batch_size_count", 0.0)),
        "skipped": d.get("restrav_stream_windows_skipped_total", 0.0),
        "dropped": {k[8:]: v for k, v in d.items() if k.startswith("dropped:") and v},
        "p50_ms": 1000 * _pct(lat, 0.5), "p95_ms": 1000 * _pct(lat, 0.95),
        "cpu_us": 1e6 * (cpu1 - cpu0) / max(1.0, embedded),
        # of it in the kernel (system time: syscalls, wake-ups, page faults)
        "kernel_share": (times1.system - times0.system) / max(1e-9, cpu1 - cpu0),
        # the stand-in decoders' ticks (frames made and put in the buffers), measured in
        # the row: real decode threads would pay it outside the event loop
        "sources_us": 1e6 * (src1 - src0) / max(1.0, embedded),
        "cpu_share": {k: v / elapsed for k, v in cpu.items()},
        # wake-ups from sleep per second, per thread (each costs the thread CPU)
        "wakes_per_s": {k: (v - sl0.get(k, 0)) / elapsed for k, v in sl1.items()},
        "lag_p99_ms": _pct(lag, 0.99), "lag_max_ms": max(lag, default=float("nan")),
        "redis_cps": (c1 - c0) / elapsed, "rss_mib": rss, "hwm_mib": hwm,
    }
    # the figures before the shutdown: a row whose serve does not stop still has them
    print(json.dumps(result), flush=True)
    stop.set()
    await tick
    try:  # a shutdown that outlasts serve's drain deadline says where its tasks wait
        await asyncio.wait_for(asyncio.shield(task), 30.0)
    except TimeoutError:
        print("serve still shutting down after 30 s; its tasks:", file=sys.stderr)
        for t in asyncio.all_tasks():
            if t is not asyncio.current_task() and "stream:" not in t.get_name():
                t.print_stack(limit=12, file=sys.stderr)
        sys.stderr.flush()
        await task
    await rc.flushall()
    await rc.aclose()
    return result


async def sources_only(n: int, fps: float, seconds: float) -> float:
    """CPU microseconds per frame of ``n`` synthetic sources alone, each read by a bare
    loop (the harness's share of a row's CPU, to tell it from the service's)."""
    clock = decoder_clock()
    srcs = [SyntheticSource(f"s{i}", fps, 16, phase=True, buffer_frames=8).clocked(clock)
            for i in range(n)]
    frames = 0
    stop = time.monotonic() + 2.0 + seconds
    t0, cpu0, f0 = 0.0, 0.0, 0

    async def read(src: SyntheticSource) -> None:
        nonlocal frames
        while time.monotonic() < stop:
            await src.recv()
            frames += 1

    async def mark() -> None:
        nonlocal t0, cpu0, f0
        await asyncio.sleep(2.0)
        t0, cpu0, f0 = time.monotonic(), time.process_time(), frames

    await asyncio.gather(mark(), *(read(s) for s in srcs))
    return 1e6 * (time.process_time() - cpu0) / max(1, frames - f0)


_SPIN = ("import os\nos.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))\n"
         "while True:\n    pass\n")


@contextlib.contextmanager
def _busy(cores: int) -> Iterator[None]:
    """``cores`` spinning processes at SCHED_IDLE for the duration (none for 0): they take
    only CPU time nobody else wants, so the cores never halt. On a virtual machine a
    halted vCPU costs the thread it wakes for tens of microseconds (the wake-probe of
    bench_frames) and a cache its neighbours have used; a GPU host busy with hundreds of
    streams does not halt its cores either (a diagnostic, BENCHMARKS.md, issue 25)."""
    procs = [subprocess.Popen([sys.executable, "-c", _SPIN]) for _ in range(cores)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def _child(args: argparse.Namespace, n: int, redis_url: str,
           profile: Path | None, tree: Path = ROOT, busy: int = 0) -> dict[str, Any]:
    with _busy(busy):
        r = _row(args, n, redis_url, profile, tree)
    r["busy"] = busy
    return r


def _row(args: argparse.Namespace, n: int, redis_url: str,
         profile: Path | None, tree: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.bench_scale", "--point", str(n), "--redis", redis_url]
    for k in ("seconds", "warmup", "model", "fps", "jitter_ms", "burst_every_s", "burst_ms",
              "dim", "fixed_ms", "per_sample_ms", "convert_threads", "delivery",
              "switch_interval_ms"):
        v = getattr(args, k)
        if v is not None:
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    load0 = os.getloadavg()[0]
    if profile is not None:
        return _profiled(args, cmd, tree, profile, load0)
    with subprocess.Popen(cmd, cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as child:
        try:
            stdout, stderr = child.communicate(
                timeout=args.warmup + args.seconds + args.row_limit_s)
        except subprocess.TimeoutExpired:
            print(f"  row {n} ({tree.name}) did not finish within its limit; where it is:\n"
                  f"{_stacks(child.pid)}", file=sys.stderr)
            child.kill()
            out_, err = child.communicate()
            print(f"  its stderr (end):\n{err[-6000:]}", file=sys.stderr)
            measured = [ln for ln in out_.splitlines() if ln.startswith("{")]
            if measured:  # measured, then its serve did not stop
                r0: dict[str, Any] = json.loads(measured[-1])
                r0.update(tree=tree.name, shutdown="hung",
                          load=(load0, os.getloadavg()[0]))
                return r0
            return {"streams": n, "tree": tree.name, "failed": "did not finish",
                    "load": (load0, os.getloadavg()[0])}
    out = subprocess.CompletedProcess(cmd, child.returncode, stdout, stderr)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"row {n} failed:\n{out.stderr[-3000:]}")
    r: dict[str, Any] = json.loads(lines[-1])
    r["load"] = (load0, os.getloadavg()[0])
    r["tree"] = tree.name
    return r


def _stacks(pid: int) -> str:
    """The Python stacks of process ``pid`` (``py-spy dump``), or why there are none."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    try:
        return subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True,
                              text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(no py-spy dump: {exc})"


def _profiled(args: argparse.Namespace, cmd: list[str], tree: Path, profile: Path,
              load0: float) -> dict[str, Any]:
    """One row with py-spy attached for the measured period only (not start-up),
    without pausing the process (``--nonblocking``)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    with subprocess.Popen(cmd, cwd=tree, stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None
        for line in child.stdout:
            if line.startswith("measuring"):
                break
        gil = ["--gil"] if args.gil else []
        subprocess.run([spy, "record", "--threads", "--nonblocking", *gil, "-r", "100", "-f", "raw",
                        "-d", str(max(1, int(args.seconds) - 1)), "-o", str(profile),
                        "--pid", str(child.pid)], capture_output=True, check=True)
        rest = child.stdout.read()
    lines = [ln for ln in rest.splitlines() if ln.startswith("{")]
    if child.returncode != 0 or not lines:
        raise RuntimeError(f"profiled row {cmd} failed")
    r: dict[str, Any] = json.loads(lines[-1])
    r["load"] = (load0, os.getloadavg()[0])
    r["tree"] = tree.name
    return r


def export_tree(rev: str, into: Path) -> Path:
    """The files of commit ``rev`` under ``into`` (for before/after runs of one change),
    with this tree's harness (``bench/``): both sides are measured by the same code and
    only the service differs."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    shutil.rmtree(into / "bench")
    shutil.copytree(ROOT / "bench", into / "bench",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return into


def print_rows(rows: list[dict[str, Any]]) -> None:
    """The table."""
    print("| tree | streams | load avg | offered Hz/stream | sustained Hz/stream | samples/s | "
          "frames/s | mean batch | windows skipped | frames dropped | p50 / p95 latency ms | "
          "CPU us/sample (loop / device / host / other, CPU-s/s) | of which in the kernel | "
          "of which stand-in sources "
          "us/sample | control plane us/sample (less the sources) | loop lag p99 / max ms | "
          "Redis cmd/s | RSS MiB | wake-ups/s (loop / device / host / other) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "failed" in r:
            print(f"| {r['tree']} | {r['streams']} | {r['load'][0]:.1f}-{r['load'][1]:.1f} | "
                  f"{r['failed']} |" + " |" * 16)
            continue
        sh = r["cpu_share"]
        split = " / ".join(f"{sh.get(k, 0.0):.2f}" for k in
                           ("MainThread", "restrav-device", "restrav-host", "other"))
        sources = f"{r['sources_us']:.0f}" if "sources_us" in r else "?"
        own = f"{r['cpu_us'] - r['sources_us']:.0f}" if "sources_us" in r else "?"
        kernel = f"{100 * r['kernel_share']:.0f} %" if "kernel_share" in r else "?"
        wk = r.get("wakes_per_s")
        wakes = " / ".join(f"{wk.get(k, 0.0):.0f}" for k in
                           ("MainThread", "restrav-device", "restrav-host", "other")
                           ) if wk else "?"
        hung = " (shutdown hung)" if r.get("shutdown") == "hung" else ""
        busy = f" (busy {r['busy']})" if r.get("busy") else ""
        print(f"| {r['tree']}{busy}{hung} | {r['streams']} | "
              f"{r['load'][0]:.1f}-{r['load'][1]:.1f} | {r['offered_hz']:.2f} | "
              f"{r['sustained_hz']:.2f} | {r['embedded_sps']:.0f} | "
              f"{r['frames_per_s']:.0f} | {r['batch_mean']:.0f} | {r['skipped']:.0f} | "
              f"{sum(r['dropped'].values()):.0f} | "
              f"{r['p50_ms']:.0f} / {r['p95_ms']:.0f} | {r['cpu_us']:.0f} ({split}) | "
              f"{kernel} | {sources} | {own} | "
              f"{r['lag_p99_ms']:.0f} / {r['lag_max_ms']:.0f} | {r['redis_cps']:.0f} | "
              f"{r['rss_mib']:.0f} | {wakes} |")


def print_medians(rows: list[dict[str, Any]]) -> None:
    """Median CPU per sample of each (tree, busy cores, streams) with several rows: on a
    shared virtual machine one row's figure moves by a third from one minute to the next."""
    groups: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for r in rows:
        if "cpu_us" in r:
            groups.setdefault((r["tree"], r.get("busy", 0), r["streams"]), []).append(r)
    if not any(len(g) > 1 for g in groups.values()):
        return
    print("\n| tree | busy cores | streams | rows | CPU us/sample: median (min-max) | "
          "control plane less the sources: median (min-max) |")
    print("|---|---|---|---|---|---|")
    for (tree, busy, n), g in groups.items():
        cpu = [r["cpu_us"] for r in g]
        own = [r["cpu_us"] - r.get("sources_us", 0.0) for r in g]
        print(f"| {tree} | {busy} | {n} | {len(g)} | {statistics.median(cpu):.0f} "
              f"({min(cpu):.0f}-{max(cpu):.0f}) | {statistics.median(own):.0f} "
              f"({min(own):.0f}-{max(own):.0f}) |")


def summarise_profile(path: Path, top: int = 25, gil: bool = False) -> None:
    """Where the time goes, from py-spy's raw (collapsed) stacks: per thread, the share
    of samples in each function (self) and under it (inclusive); ``gil``: the samples
    are of the thread holding the GIL only (``py-spy --gil``)."""
    by_thread: Counter[str] = Counter()
    self_t: Counter[tuple[str, str]] = Counter()
    incl: Counter[tuple[str, str]] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        # "function (file:line)" -> "function (file)": a function's lines add up
        frames = [f.rsplit(":", 1)[0] + ")" if f.endswith(")") and ":" in f else f
                  for f in stack.split(";")]
        thread, frames = frames[0], frames[1:]
        c = int(count)
        by_thread[thread] += c
        if frames:
            self_t[(thread, frames[-1])] += c
        for f in set(frames):
            incl[(thread, f)] += c
    total = sum(by_thread.values())
    print(f"py-spy: {total} samples at 100 Hz over the measured period, while a thread "
          f"{'held the GIL' if gil else 'ran (idle left out)'}\n")
    for thread, c in by_thread.most_common(4):
        print(f"### {thread}: {100 * c / total:.0f} % of the samples\n")
        print("| function | self % of thread | inclusive % |")
        print("|---|---|---|")
        rows = sorted(((v, f) for (t, f), v in self_t.items() if t == thread), reverse=True)
        for v, f in rows[:top]:
            print(f"| {f} | {100 * v / c:.1f} | {100 * incl[(thread, f)] / c:.1f} |")
        print()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", default="64,128,256,320,384,512")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--warmup", type=float, default=12.0)
    p.add_argument("--model", choices=sorted(H100_MODELS), default="bfloat16",
                   help="the stand-in's cost model (H100 forward pass)")
    p.add_argument("--fixed-ms", type=float, default=None, help="override a (ms per batch)")
    p.add_argument("--per-sample-ms", type=float, default=None, help="override b (ms)")
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--jitter-ms", type=float, default=0.0)
    p.add_argument("--switch-interval-ms", type=float, default=None,
                   help="sys.setswitchinterval for the measured period, over serve's "
                   "(1 ms); Python's default is 5")
    p.add_argument("--delivery", choices=("clock", "thread"), default="clock",
                   help="frames put by the loop's 5 ms clock (default) or by a thread at "
                   "each frame's own time, as decode threads do")
    p.add_argument("--burst-every-s", type=float, default=0.0)
    p.add_argument("--burst-ms", type=float, default=0.0)
    p.add_argument("--dim", type=int, default=64, help="stand-in embedding size")
    p.add_argument("--convert-threads", type=int, default=None,
                   help="serve.engine.convert_threads (default: the setting's default)")
    p.add_argument("--profile", type=int, default=None, metavar="N",
                   help="run N streams under py-spy and print where the time goes")
    p.add_argument("--gil", action="store_true",
                   help="with --profile: sample only the thread holding the GIL (py-spy "
                   "--gil): where the Python CPU goes, without the waits a thread "
                   "that is not idle to py-spy spends in the kernel")
    p.add_argument("--compare", default=None, metavar="REV,REV",
                   help="before/after: run each row for both commits, alternating")
    p.add_argument("--trees", default=None, metavar="DIR,DIR",
                   help="as --compare, for source trees (e.g. one with an extra package)")
    p.add_argument("--repeat", type=int, default=1,
                   help="rows per tree (--compare, --trees, --busy-cores); medians printed")
    p.add_argument("--busy-cores", default="0", metavar="N[,N]",
                   help="SCHED_IDLE spinners during each row, so the vCPUs never halt (a "
                   "diagnostic of the VM's wake-up cost); several values alternate")
    p.add_argument("--row-limit-s", type=float, default=240.0,
                   help="a row still running this long after warm-up + seconds is cut")
    p.add_argument("--point", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--redis", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.point is not None:
        register_synthetic_source()
        # the heap `serve` has: torch and transformers loaded
        import transformers.models.dinov2.modeling_dinov2  # noqa: F401

        print(json.dumps(asyncio.run(run_point(args))), flush=True)
        return 0
    # SIGTERM: the running row's process is killed and the redis-server stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    fixed_s, per_s = H100_MODELS[args.model]
    a = args.fixed_ms if args.fixed_ms is not None else fixed_s * 1000
    b = args.per_sample_ms if args.per_sample_ms is not None else per_s * 1000
    print("# bench_scale: N live streams through the real serve (stand-in backbone)")
    print(f"CPU: {cpu_model()}; flags: {cpu_flags()}")
    print(f"stand-in backbone: {a:g} ms + n x {b:g} ms per batch ({args.model} H100 model); "
          f"sources {args.fps:g} fps ({args.delivery}), jitter {args.jitter_ms:g} ms, bursts "
          f"{args.burst_ms:g} ms every {args.burst_every_s:g} s; D = {args.dim}; "
          f"{args.warmup:g} s warm-up, {args.seconds:g} s measured per row\n")
    with tempfile.TemporaryDirectory() as tmp:
        rs = RedisProcess(Path(tmp))
        rs.start()
        try:
            trees = [ROOT]
            if args.compare:
                trees = [export_tree(rev, Path(tmp) / rev) for rev in args.compare.split(",")]
            elif args.trees:
                trees = [Path(t).resolve() for t in args.trees.split(",")]
            if args.profile is not None:
                for i, tree in enumerate(trees):
                    out = Path(tmp) / f"profile{i}.txt"
                    r = _child(args, args.profile, rs.url, out, tree)
                    print_rows([r])
                    print()
                    summarise_profile(out, gil=args.gil)
                return 0
            rows = []
            busy = [int(v) for v in args.busy_cores.split(",")]
            runs = [(tree, b) for tree in trees for b in busy]
            for n in (int(v) for v in args.streams.split(",")):
                for _ in range(args.repeat if len(runs) > 1 else 1):
                    for tree, b in runs:
                        rows.append(_child(args, n, rs.url, None, tree, b))
                        print(f"  done {n}: {json.dumps(rows[-1])}", file=sys.stderr,
                              flush=True)
            print_rows(rows)
            print_medians(rows)
            n = max(int(v) for v in args.streams.split(","))
            us = asyncio.run(sources_only(n, args.fps, 10.0))
            print(f"\nThe harness's own share: {n} synthetic sources read by a bare loop cost "
                  f"{us:.1f} us of CPU per frame ({us * args.fps / 11.5:.1f} us per sample at "
                  f"{args.fps:g} fps; load average {os.getloadavg()[0]:.1f}).")
        finally:
            rs.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
