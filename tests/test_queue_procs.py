"""The clip queue with real worker processes (`python -m workers.cli worker`).

Two workers share 50 jobs; a worker is SIGKILLed mid-job; a job that crashes
every worker that takes it ends in the dead-letter stream. Each test starts its
workers once (loading torch and the tiny model costs seconds per process).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import redis

from monitor import keys
from monitor.config import QueueSettings
from monitor.queue import Job, JobOptions, enqueue, get_result, queue_stats
from workers.cli import main as cli_main

from .media import write_clip
from .queue_helpers import make_bad_inputs, wait_for

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 240.0

pytestmark = pytest.mark.slow


class Workers:
    """Worker processes of one test, stopped (SIGTERM, then SIGKILL) at the end."""

    def __init__(self, redis_url: str, model_dir: Path, logs: Path) -> None:
        self.redis_url = redis_url
        self.model_dir = model_dir
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._files: list[IO[bytes]] = []

    def start(self, name: str, **env: str) -> subprocess.Popen[bytes]:
        full = dict(
            os.environ,
            PYTHONPATH=str(REPO),
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            RESTRAV_REDIS__URL=self.redis_url,
            RESTRAV_QUEUE__VISIBILITY_TIMEOUT_S="3",
            RESTRAV_QUEUE__HEARTBEAT_INTERVAL_S="0.5",
            RESTRAV_QUEUE__RECLAIM_INTERVAL_S="0.5",
            RESTRAV_QUEUE__BLOCK_MS="200",
            RESTRAV_QUEUE__MAX_DELIVERIES="2",
            RESTRAV_MODEL__THREADS="1",
            RESTRAV_DECODE__MAX_PIXELS="10000",
        )
        full.update(env)  # the caller's settings win
        log = (self.logs / f"{name}.log").open("wb")
        self._files.append(log)
        proc = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "-v", "worker", "--name", name,
             "--model", str(self.model_dir)],
            cwd=REPO, env=full, stdout=log, stderr=subprocess.STDOUT,
        )
        self.procs[name] = proc
        return proc

    def wait_ready(self, client: redis.Redis) -> None:
        for name, proc in self.procs.items():
            wait_for(
                lambda n=name, p=proc: client.exists(keys.heartbeat_key(n)) or p.poll() is not None,
                START_TIMEOUT_S,
                f"worker {name} to start",
            )
            assert proc.poll() is None, self.log(name)

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]

    def stop(self) -> dict[str, int]:
        codes: dict[str, int] = {}
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
        for f in self._files:
            f.close()
        return codes


@pytest.fixture
def workers(redis_url: str, tiny_model_dir: Path, tmp_path: Path) -> Iterator[Workers]:
    w = Workers(redis_url, tiny_model_dir, tmp_path)
    yield w
    w.stop()


def good_clips(d: Path, n: int) -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = d / f"good-{i}.mp4"
        write_clip(p, fps=(30, 25, 24, 12)[i % 4], n_frames=75, motion=("linear", "jitter")[i % 2])
        out.append(p)
    return out


def put(client: redis.Redis, job_id: str, source: str, **options: Any) -> None:
    enqueue(client, Job(job_id=job_id, source=source, options=JobOptions(**options)),
            QueueSettings())


def runs(client: redis.Redis, job_id: str) -> int:
    return int(client.get(keys.runs_key(job_id)) or 0)


def test_fifty_jobs_two_workers(
    client: redis.Redis,
    workers: Workers,
    redis_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    clips = good_clips(tmp_path / "good", 8)
    bad = make_bad_inputs(tmp_path / "bad")
    assert len(bad) == 10
    workers.start("w1")
    workers.start("w2")
    workers.wait_ready(client)

    for name, (source, _) in bad.items():
        put(client, f"bad-{name}", source)
    sources = [str(clips[i % len(clips)]) for i in range(40)]
    status = cli_main(
        ["submit", "--wait", "--timeout", "300", "--redis-url", redis_url, *sources]
    )
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert status == 0, out
    assert len(out) == 40 and all(r["ok"] for r in out)
    assert sorted(r["source"] for r in out) == sorted(sources)
    good_ids = [r["job_id"] for r in out]
    assert len(set(good_ids)) == 40

    wait_for(lambda: all(client.exists(keys.result_key(f"bad-{n}")) for n in bad), 120,
             "bad results")
    for name, (_, code) in bad.items():
        res = get_result(client, f"bad-{name}")
        assert res is not None and res["ok"] is False
        assert res["error"]["code"] == code, (name, res["error"])
    for job_id in good_ids:
        res = get_result(client, job_id)
        assert res is not None and res["status"] == "scored"
        assert res["clip"]["windows"] and res["aggregate"]["windows"] == len(res["clip"]["windows"])

    # nothing processed twice: one scoring run and one answer per job
    all_ids = good_ids + [f"bad-{n}" for n in bad]
    assert [runs(client, j) for j in all_ids] == [1] * 50
    notes = client.xrange(keys.RESULTS)
    assert sorted(n[1]["job_id"] for n in notes) == sorted(all_ids)
    # both processes worked
    assert {get_result(client, j)["worker"] for j in good_ids} == {"w1", "w2"}  # type: ignore[index]
    stats = queue_stats(client, "workers")
    assert stats.pending == 0 and stats.lag == 0 and stats.dead == 0
    assert workers.stop() == {"w1": 0, "w2": 0}  # SIGTERM: graceful, exit 0


def test_sigkill_mid_job_loses_nothing(
    client: redis.Redis, workers: Workers, tmp_path: Path
) -> None:
    clips = good_clips(tmp_path / "good", 2)
    slow = {"RESTRAV_TESTING": "1", "RESTRAV_TESTING_SLOW_JOB": "slow:120"}
    workers.start("w1", **slow)
    workers.start("w2", **slow)
    workers.wait_ready(client)

    put(client, "slow", str(clips[0]))
    for i in range(6):
        put(client, f"other-{i}", str(clips[i % 2]), hop=3)

    def holder() -> str | None:
        for name in ("w1", "w2"):
            raw = client.get(keys.heartbeat_key(name))
            if raw and "slow" in json.loads(raw)["jobs"]:
                return name
        return None

    victim = wait_for(holder, 60, "a worker to take the slow job")
    survivor = "w2" if victim == "w1" else "w1"
    workers.procs[victim].send_signal(signal.SIGKILL)
    assert workers.procs[victim].wait(timeout=30) == -signal.SIGKILL

    ids = ["slow"] + [f"other-{i}" for i in range(6)]
    wait_for(lambda: all(client.exists(keys.result_key(j)) for j in ids), 120, "all results")
    res = get_result(client, "slow")
    assert res is not None and res["ok"] is True
    assert res["worker"] == survivor and res["attempt"] == 2
    assert runs(client, "slow") == 2  # the killed run and the completed one
    assert all(runs(client, f"other-{i}") == 1 for i in range(6))
    assert sorted(n[1]["job_id"] for n in client.xrange(keys.RESULTS)) == sorted(ids)
    stats = queue_stats(client, "workers")
    assert stats.pending == 0 and stats.lag == 0 and stats.dead == 0
    # the dead worker's heartbeat lapses, the survivor's does not
    wait_for(lambda: not client.exists(keys.heartbeat_key(victim)), 10, "heartbeat expiry")
    assert client.exists(keys.heartbeat_key(survivor))


def test_job_that_crashes_its_worker_is_dead_lettered(
    client: redis.Redis, workers: Workers, tmp_path: Path
) -> None:
    clips = good_clips(tmp_path / "good", 1)
    crash = {"RESTRAV_TESTING": "1", "RESTRAV_TESTING_CRASH_JOB": "boom"}
    for name in ("w1", "w2", "w3"):
        workers.start(name, **crash)
    workers.wait_ready(client)

    put(client, "boom", str(clips[0]))
    put(client, "fine", str(clips[0]), hop=3)
    wait_for(lambda: client.xlen(keys.JOBS_DEAD) == 1, 120, "the dead letter")
    wait_for(lambda: client.exists(keys.result_key("fine")), 60, "the good job")

    codes = {n: p.poll() for n, p in workers.procs.items()}
    assert sorted(codes.values(), key=str) == sorted([70, 70, None], key=str), codes
    (dead,) = client.xrange(keys.JOBS_DEAD)
    fields = dead[1]
    assert json.loads(fields[keys.JOB_FIELD])["job_id"] == "boom"
    assert fields["deliveries"] == "2"
    assert json.loads(fields["last_error"])["code"] == "worker_lost"
    res = get_result(client, "boom")
    assert res is not None and res["error"]["code"] == "dead_lettered"
    assert runs(client, "boom") == 2
    fine = get_result(client, "fine")
    assert fine is not None and fine["ok"] is True
    stats = queue_stats(client, "workers")
    assert stats.pending == 0 and stats.lag == 0 and stats.dead == 1


def test_sigterm_while_a_job_computes_exits_0_not_an_abort(
    client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """A job still inside its forward pass when the shutdown grace ends is released to
    other workers and the process exits with the documented 0. The interpreter's
    teardown under that job's thread aborted it (SIGABRT, "terminate called without an
    active exception": pthread_exit unwinding through torch's C++)."""
    from .conftest import build_tiny_dinov2

    model = build_tiny_dinov2(tmp_path / "slow", hidden=384, layers=4, heads=6)
    clip = tmp_path / "long.mp4"
    write_clip(clip, fps=25, n_frames=250, size=(64, 48))  # 10 s: seconds of scoring
    w = Workers(redis_url, model, tmp_path)
    try:
        w.start("w1", RESTRAV_QUEUE__SHUTDOWN_GRACE_S="0.2", RESTRAV_MODEL__IMAGE_SIZE="224")
        w.wait_ready(client)
        put(client, "slow", str(clip))
        wait_for(lambda: client.xpending(keys.JOBS, "workers")["pending"] == 1, 60,
                 "the job to be taken")
    finally:
        codes = w.stop()
    log = w.log("w1")
    assert "terminate called" not in log, log
    assert codes == {"w1": 0}, log
    assert "released 1 unfinished job" in log
    assert not client.exists(keys.result_key("slow"))  # released, not answered
