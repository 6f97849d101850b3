"""The clip queue across Redis Sentinel failovers, Jepsen-style: every job a producer
was told is enqueued is checked at the end.

Real processes on loopback: one primary, one replica and three sentinels
(``tests/sentinelproc.py``), three `restrav worker` processes (tiny model) and two
producers each running `restrav submit` one job after another, all through the
``redis+sentinel://`` URL with ``redis.wait_replicas: 1``. Meanwhile the primary is
SIGKILLed RESTRAV_CHAOS_FAILOVERS times (default 10): a sentinel promotes the replica,
the old primary comes back as a replica of the new one (without its data since its
last full sync, and not promotable until it has resynced: ``tests/sentinelproc.py``
says why), and the load goes on. The second scenario freezes the primary (SIGSTOP: its
connections stay open, nothing answers) until a replica is promoted, then lets it go:
the clients' read timeouts (``queue_cmd``: connect timeout + the longest blocking
call + 1 s) bound a longer freeze; a write no replica acknowledged makes a client ask
the sentinels again (``rediscover``); a sentinel demotes the old primary seconds
later, and what it took meanwhile, never counted as done, is discarded by its resync.

Counted on the final primary once every acknowledged job is answered (or a deadline
passed): jobs acknowledged to the producer (its `submit` exited 0 and printed the
job), answered, lost (acknowledged, no result), answered twice (more than one note
on ``restrav:results`` not marked duplicate), scored twice (``restrav:runs`` above
1: allowed, delivery is at least once), the time from each kill to the first
answer written on the new primary (its note's entry id; acknowledged by a replica
only once the old primary is a synced replica again, also timed), p50 and p95.
Asserted: 0 lost, 0 answered twice, every failover happened. Figures in RELIABILITY.md.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from monitor import keys
from monitor.queue import connect
from tests.queue_helpers import wait_for
from tests.sentinelproc import SentinelSetup, started
from tests.test_queue_procs import REPO, Workers, good_clips, runs

FAILOVERS = int(os.environ.get("RESTRAV_CHAOS_FAILOVERS", "10"))
LOAD_BETWEEN_S = 3.0
DONE_TIMEOUT_S = 300.0
pytestmark = [pytest.mark.chaos, pytest.mark.timeout(FAILOVERS * 60 + 900)]

DURABLE = {"RESTRAV_REDIS__WAIT_REPLICAS": "1", "RESTRAV_REDIS__WAIT_TIMEOUT_S": "1"}


class Producer:
    """`restrav submit` one job at a time until stopped; records what it was told."""

    def __init__(self, url: str, clips: list[Path], logs: Path, prefix: str) -> None:
        self.prefix = prefix
        self.url = url
        self.clips = clips
        self.logs = logs
        self.acknowledged: list[str] = []
        self.refused: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), **DURABLE}
        n = 0
        with (self.logs / f"producer-{self.prefix}.log").open("a") as log:
            while not self.stop.is_set():
                job_id = f"{self.prefix}-{n}"
                proc = subprocess.run(
                    [sys.executable, "-m", "workers.cli", "submit", "--redis-url", self.url,
                     "--job-id", job_id, "--hop", "12", str(self.clips[n % len(self.clips)])],
                    capture_output=True, text=True, env=env, cwd=REPO, timeout=120,
                )
                log.write(f"{job_id} rc={proc.returncode} {proc.stderr.strip()[-300:]}\n")
                told = proc.returncode == 0 and proc.stdout.strip() and json.loads(
                    proc.stdout)["job_id"] == job_id
                (self.acknowledged if told else self.refused).append(job_id)
                n += 1
                time.sleep(0.1)


def notes(client: redis.Redis) -> tuple[dict[str, int], list[int]]:
    """Per job id the notes on restrav:results (duplicates left out), and each note's
    time (ms, from its entry id)."""
    count: dict[str, int] = {}
    times: list[int] = []
    for entry_id, f in client.xrange(keys.RESULTS):
        if f.get("duplicate"):
            continue
        count[f["job_id"]] = count.get(f["job_id"], 0) + 1
        times.append(int(entry_id.split("-", 1)[0]))
    return count, times


def audit_jobs(client: redis.Redis, acked: list[str]) -> tuple[list[str], list[str], int,
                                                                list[int]]:
    """Once every job in ``acked`` has a result (or DONE_TIMEOUT_S passed): the lost ones
    (no result), the ones answered twice (module docstring), how many were scored more
    than once, and the time of every note (ms, :func:`notes`)."""
    deadline = time.monotonic() + DONE_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if all(client.exists(keys.result_key(j)) for j in acked):
                break
        except (redis.ConnectionError, redis.TimeoutError):
            pass
        time.sleep(0.5)
    count, times = notes(client)
    lost = [j for j in acked if not client.exists(keys.result_key(j))]
    twice = [j for j, n in count.items() if n > 1]
    return lost, twice, sum(runs(client, j) > 1 for j in acked), times


def job_figures(acked: list[str], refused: list[str], lost: list[str], twice: list[str],
                scored_twice: int) -> str:
    """The queue's counts, for the printed summary."""
    return (f"jobs acknowledged {len(acked)}, refused to the producer {len(refused)}, "
            f"answered {len(acked) - len(lost)}, lost {len(lost)}, answered twice "
            f"{len(twice)}, scored twice {scored_twice}")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["sigkill", "sigstop"])
def test_queue_across_sentinel_failovers(
    sig: signal.Signals, tiny_model_dir: Path, tmp_path: Path
) -> None:
    with started(SentinelSetup(tmp_path / "redis", replicas=1, sentinels=3)) as setup:
        url = setup.url()
        client = connect(url)
        clips = good_clips(tmp_path / "clips", 4)
        w = Workers(url, tiny_model_dir, tmp_path)
        producers = [Producer(url, clips, tmp_path, p) for p in ("p", "q")]
        kills: list[float] = []
        promote_s: list[float] = []
        rejoin_s: list[float] = []
        try:
            for name in ("w1", "w2", "w3"):
                w.start(name, **DURABLE)
            w.wait_ready(client)
            for p in producers:
                p.thread.start()
            wait_for(lambda: sum(len(p.acknowledged) for p in producers) >= 3, 120,
                     "the first jobs")
            for _ in range(FAILOVERS):
                time.sleep(LOAD_BETWEEN_S)
                t0 = time.time()
                old = setup.kill_primary(sig)
                kills.append(t0)
                setup.wait_promoted(old)
                promote_s.append(time.time() - t0)
                setup.bring_back(old)
                rejoin_s.append(time.time() - t0)
                for name, proc in w.procs.items():
                    assert proc.poll() is None, w.log(name)
            time.sleep(LOAD_BETWEEN_S)
            for p in producers:
                p.stop.set()
                p.thread.join(150)
            acked = [j for p in producers for j in p.acknowledged]
            refused = [j for p in producers for j in p.refused]
            lost, twice, scored_twice, times = audit_jobs(client, acked)
            resume = [min((t for t in times if t >= k * 1000), default=0) / 1000 - k
                      for k in kills]
            resume = [r for r in resume if r >= 0] or [float("nan")]
            timeouts = sum((tmp_path / f"{n}.log").read_text(errors="replace").count("Timeout")
                           for n in w.procs)
            print(
                f"\nSentinel failovers: {len(kills)} {sig.name}s of the primary; promotion "
                f"p50 {statistics.median(promote_s):.1f} s max {max(promote_s):.1f} s; old "
                f"primary a synced replica again p50 {statistics.median(rejoin_s):.1f} s; "
                f"{job_figures(acked, refused, lost, twice, scored_twice)}; kill to first "
                f"answer after it p50 {pct(resume, 0.5):.1f} s p95 {pct(resume, 0.95):.1f} s; "
                f"worker log lines naming a timeout {timeouts}; failovers the sentinels "
                f"made {setup.sentinel_events('+switch-master')}, attempts with no "
                f"promotable replica {setup.sentinel_events('-failover-abort-no-good-slave')}"
            )
            assert len(kills) == FAILOVERS and len(acked) >= FAILOVERS
            assert lost == [] and twice == []
        finally:
            for p in producers:
                p.stop.set()
                p.thread.join(150)
            codes = w.stop()
            client.close()
        assert all(c == 0 for c in codes.values()), codes
