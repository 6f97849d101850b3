"""50 RTSP publisher restarts under `restrav serve`: resume share and time, no window across.

A real rtsp-server-perl, a real ffmpeg publisher, a real redis-server and serve
(tiny model, UDP). Each outage stops the publisher, alternately with SIGTERM
(ffmpeg tears its session down) and SIGKILL (rtsp-server-perl then keeps the
dead mount and answers a new publisher 403, so the server is restarted too, as
an operator or supervisor would), waits 1 s and starts it again. Figures
(printed; recorded in RELIABILITY.md): the share of outages after which scores
resumed, time from the publisher's restart to the first score after it
(p50/p95), windows spanning an outage (must be 0), seq gaps inside a segment
(must be 0), serve threads/RSS/fds after warm-up and at the end.

RESTRAV_CHAOS_RESTARTS sets the count (default 50).
"""

from __future__ import annotations

import os
import signal
import statistics
import time
from pathlib import Path

import pytest
import redis

from monitor import keys
from tests.liveproc import Serve, one_camera, wait_until
from tests.redisproc import RedisProcess

RESTARTS = int(os.environ.get("RESTRAV_CHAOS_RESTARTS", "50"))

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(300 + 70 * RESTARTS)]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def seq_gaps(entries: list[dict[str, str]]) -> int:
    """Missing or repeated seq numbers inside each segment."""
    by_seg: dict[int, list[int]] = {}
    for e in entries:
        by_seg.setdefault(int(e["segment"]), []).append(int(e["seq"]))
    gaps = 0
    for seqs in by_seg.values():
        seqs.sort()
        gaps += (seqs[-1] - seqs[0] + 1) - len(set(seqs)) + (len(seqs) - len(set(seqs)))
    return gaps


def test_rtsp_publisher_restarts(tmp_path: Path, tiny_model_dir: Path) -> None:
    rp = RedisProcess(tmp_path)
    rp.start()
    srv, pub, cfg = one_camera(tmp_path)
    serve = Serve(tmp_path, tiny_model_dir, {**cfg, "sinks": {"scores_maxlen": 1_000_000}},
                  redis_url=rp.url)
    r = redis.Redis.from_url(rp.url, decode_responses=True)
    key = keys.stream_scores("cam")
    outages: list[tuple[float, float]] = []
    resume_s: list[float] = []
    try:
        serve.start()
        wait_until(lambda: r.xlen(key) >= 5, 180, "first scores")
        time.sleep(5)
        before = (serve.threads(), serve.rss_mib(), serve.fds())
        for i in range(RESTARTS):
            sig = signal.SIGTERM if i % 2 == 0 else signal.SIGKILL
            t_kill = time.time()
            pub.kill(sig)
            if sig == signal.SIGKILL:
                srv.stop()  # the dead publisher's mount stays otherwise (403 to a new one)
            time.sleep(1.0)
            if sig == signal.SIGKILL:
                srv.start()
            t_up = time.time()
            pub.start()
            outages.append((t_kill, t_up))

            def resumed(t_up: float = t_up) -> bool:
                last = r.xrevrange(key, count=1)
                return bool(last) and float(last[0][1]["wall_start"]) >= t_up

            try:
                wait_until(resumed, 60, f"scores after restart {i + 1}", step_s=0.1)
                resume_s.append(time.time() - t_up)
            except AssertionError:
                print(f"restart {i + 1} ({sig.name}): no score within 60 s")
        time.sleep(5)
        after = (serve.threads(), serve.rss_mib(), serve.fds())
        assert serve.stop() == 0
    finally:
        serve.kill()
        pub.kill()
        srv.stop()
    entries = [e[1] for e in r.xrange(key)]
    rp.stop()
    spanning = sum(
        1 for e in entries for t_kill, t_up in outages
        if float(e["wall_start"]) < t_kill and float(e["wall_end"]) > t_up
    )
    gaps = seq_gaps(entries)
    print(f"\nRTSP publisher restarts: {RESTARTS} ({(RESTARTS + 1) // 2} SIGTERM, "
          f"{RESTARTS // 2} SIGKILL + server restart)")
    print(f"  resumed after {len(resume_s)}/{RESTARTS} outages; time to first score after "
          f"the restart p50 {statistics.median(resume_s):.1f} s, p95 {pct(resume_s, 0.95):.1f} s, "
          f"max {max(resume_s):.1f} s")
    print(f"  windows {len(entries)}; spanning an outage {spanning}; seq gaps {gaps}")
    print(f"  serve threads {before[0]} -> {after[0]}, RSS {before[1]:.0f} -> {after[1]:.0f} MiB, "
          f"fds {before[2]} -> {after[2]}")
    assert len(resume_s) == RESTARTS
    assert spanning == 0 and gaps == 0
    assert after[0] <= before[0] + 2, (before, after)
    assert after[2] <= before[2] + 2, (before, after)
    assert "Traceback" not in serve.log()
