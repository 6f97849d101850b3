"""The clip queue under worker and Redis faults, with real worker processes
(`python -m workers.cli worker`, tiny model) and a real redis-server.

* 20 SIGKILLs of busy workers (3 workers, 60 jobs, good and bad, one poisoned
  job that crashes every worker that takes it): 0 lost, 0 answered twice, dead
  letters only for the poisoned job;
* a worker SIGSTOPped past the visibility timeout, then resumed: its late
  answers are discarded, each job answered once;
* Redis restarted from its append-only file mid-run: each job answered once;
* Redis restarted without its data: the workers recreate the group and answer
  the jobs enqueued after it.

Each prints its figures (jobs scored more than once, answered twice, lost),
recorded in RELIABILITY.md. Bounded: RESTRAV_CHAOS_QUEUE_KILLS (20) kills,
every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from monitor import keys
from monitor.queue import connect
from tests.queue_helpers import make_bad_inputs, wait_for
from tests.redisproc import RedisProcess
from tests.test_queue_procs import Workers, good_clips, put, runs

KILLS = int(os.environ.get("RESTRAV_CHAOS_QUEUE_KILLS", "20"))
DONE_TIMEOUT_S = 900.0
# each scenario's own waits bound it, not pytest's default 300 s
pytestmark = [pytest.mark.chaos, pytest.mark.timeout(DONE_TIMEOUT_S + 600)]


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path / "redis", appendonly=True)
    server.dir.mkdir()
    server.start()
    yield server
    server.stop()


def replies(client: redis.Redis, job_id: str) -> int:
    return int(client.xlen(f"restrav:replies:{job_id}"))


def put_replying(client: redis.Redis, job_id: str, source: str) -> None:
    put(client, job_id, source, hop=12)
    # put() enqueues without reply_to: rewrite the last entry's job with one
    last = client.xrevrange(keys.JOBS, count=1)[0]
    job = json.loads(last[1][keys.JOB_FIELD])
    job["reply_to"] = f"restrav:replies:{job_id}"
    client.xdel(keys.JOBS, last[0])
    client.xadd(keys.JOBS, {keys.JOB_FIELD: json.dumps(job)})


def figures(client: redis.Redis, ids: list[str]) -> dict[str, int]:
    """lost (no result), scored_twice (runs > 1), answered_twice (> 1 note or reply)."""
    notes: dict[str, int] = {}
    for _, f in client.xrange(keys.RESULTS):
        if f.get("duplicate"):
            continue  # a new submission of an answered job id (none here)
        notes[f["job_id"]] = notes.get(f["job_id"], 0) + 1
    return {
        "jobs": len(ids),
        "lost": sum(not client.exists(keys.result_key(i)) for i in ids),
        "scored_twice": sum(runs(client, i) > 1 for i in ids),
        "answered_twice": sum(notes.get(i, 0) > 1 or replies(client, i) > 1 for i in ids),
    }


def full_log(logs: Path, name: str) -> str:
    return (logs / f"{name}.log").read_text(errors="replace")


def all_answered(client: redis.Redis, ids: list[str]) -> bool:
    return all(client.exists(keys.result_key(i)) for i in ids)


def busy(client: redis.Redis, name: str) -> bool:
    raw = client.get(keys.heartbeat_key(name))
    return bool(raw and json.loads(raw).get("jobs"))


def test_twenty_sigkills_mid_job(
    redis_url: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    client = connect(redis_url)
    good = good_clips(tmp_path / "good", 8)
    bad = make_bad_inputs(tmp_path / "bad")
    ids: list[str] = []
    for i in range(48):
        ids.append(f"good-{i}")
        put_replying(client, ids[-1], str(good[i % len(good)]))
    bad_items = list(bad.items())
    for i in range(11):
        name, (source, _) = bad_items[i % len(bad_items)]
        ids.append(f"bad-{name}-{i}")
        put_replying(client, ids[-1], source)
    ids.append("poison")
    put_replying(client, "poison", str(good[0]))
    env = {"RESTRAV_TESTING": "1", "RESTRAV_TESTING_CRASH_JOB": "poison",
           "RESTRAV_TESTING_SLOW_JOB": "*:1.5"}
    w = Workers(redis_url, tiny_model_dir, tmp_path)
    names = ["k1", "k2", "k3"]
    try:
        for n in names:
            w.start(n, **env)
        w.wait_ready(client)
        kills = 0
        rng = random.Random(14)
        deadline = time.monotonic() + DONE_TIMEOUT_S
        while kills < KILLS and not all_answered(client, ids) and time.monotonic() < deadline:
            victims = [n for n in names if w.procs[n].poll() is None and busy(client, n)]
            for n in names:  # restart the ones that died (killed or poisoned)
                if w.procs[n].poll() is not None:
                    w.start(n, **env)
            if not victims:
                time.sleep(0.2)
                continue
            victim = rng.choice(victims)
            w.procs[victim].send_signal(signal.SIGKILL)
            w.procs[victim].wait()
            kills += 1
            w.start(victim, **env)
        while not all_answered(client, ids) and time.monotonic() < deadline:
            for n in names:
                if w.procs[n].poll() is not None:
                    w.start(n, **env)
            time.sleep(0.5)
        fig = figures(client, ids)
        dead = [json.loads(f[keys.JOB_FIELD])["job_id"] for _, f in client.xrange(keys.JOBS_DEAD)]
        print(f"\nSIGKILL: {kills} kills, {fig}, dead letters {dead}")
        assert kills == KILLS
        assert fig["lost"] == 0 and fig["answered_twice"] == 0
        assert dead == ["poison"]
    finally:
        w.stop()


def test_sigstop_past_the_lease(redis_url: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    client = connect(redis_url)
    good = good_clips(tmp_path / "good", 4)
    ids = [f"s-{i}" for i in range(12)]
    for i, job_id in enumerate(ids):
        put_replying(client, job_id, str(good[i % 4]))
    env = {"RESTRAV_TESTING": "1", "RESTRAV_TESTING_SLOW_JOB": "*:2"}
    w = Workers(redis_url, tiny_model_dir, tmp_path)
    try:
        w.start("a", RESTRAV_QUEUE__CONCURRENCY="2", **env)
        w.start("b", **env)
        w.wait_ready(client)
        stops = 0
        for _ in range(3):  # pause a while it holds jobs, 3x the visibility timeout (3 s)
            wait_for(lambda: busy(client, "a") or all_answered(client, ids), 300, "a busy")
            if all_answered(client, ids):
                break
            w.procs["a"].send_signal(signal.SIGSTOP)
            time.sleep(9)
            w.procs["a"].send_signal(signal.SIGCONT)
            stops += 1
        wait_for(lambda: all_answered(client, ids), DONE_TIMEOUT_S, "every answer")
        time.sleep(3)  # let late answers arrive
        late = full_log(tmp_path, "a").count("late answer")
        fig = figures(client, ids)
        print(f"\nSIGSTOP: {stops} pauses of 9 s (lease 3 s), {fig}, late answers discarded {late}")
        assert fig["lost"] == 0 and fig["answered_twice"] == 0
        # the scenario happened: a was paused holding jobs, and another worker took one over
        assert stops >= 1 and fig["scored_twice"] >= 1
    finally:
        w.stop()


def test_redis_restart_from_aof(
    aof_redis: RedisProcess, tiny_model_dir: Path, tmp_path: Path
) -> None:
    client = connect(aof_redis.url)
    good = good_clips(tmp_path / "good", 4)
    ids = [f"r-{i}" for i in range(50)]
    for i, job_id in enumerate(ids):
        put_replying(client, job_id, str(good[i % 4]))
    env = {"RESTRAV_TESTING": "1", "RESTRAV_TESTING_SLOW_JOB": "*:0.3"}
    w = Workers(aof_redis.url, tiny_model_dir, tmp_path)
    try:
        w.start("a", **env)
        w.start("b", **env)
        w.wait_ready(client)
        restarts = 0
        for _ in range(2):
            wait_for(lambda: busy(client, "a") and busy(client, "b"), 300, "both busy")
            aof_redis.stop()
            time.sleep(5)  # longer than the visibility timeout (3 s)
            aof_redis.start()
            restarts += 1
        wait_for(lambda: all_answered(client, ids), DONE_TIMEOUT_S, "every answer")
        time.sleep(3)
        fig = figures(client, ids)
        print(f"\nRedis restart from AOF: {restarts} restarts of 5 s, {fig}")
        assert fig["lost"] == 0 and fig["answered_twice"] == 0
    finally:
        w.stop()


def test_redis_restart_without_data(
    redis_url: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    client = connect(redis_url)
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    good = good_clips(tmp_path / "good", 2)
    w = Workers(redis_url, tiny_model_dir, tmp_path)
    try:
        w.start("a")
        w.start("b")
        w.wait_ready(client)
        before = [f"b-{i}" for i in range(5)]
        for i, job_id in enumerate(before):
            put_replying(client, job_id, str(good[i % 2]))
        wait_for(lambda: all_answered(client, before), 300, "answers before")
        server = RedisProcess(tmp_path, port=port)
        with contextlib.suppress(redis.ConnectionError):
            client.shutdown(nosave=True)  # the fixture's server: it comes back empty
        server.start()
        try:
            after = [f"a-{i}" for i in range(10)]
            for i, job_id in enumerate(after):
                put_replying(client, job_id, str(good[i % 2]))
            wait_for(lambda: all_answered(client, after), 300, "answers after the data loss")
            recreated = sum(full_log(tmp_path, n).count("was missing") for n in ("a", "b"))
            fig = figures(client, after)
            print(f"\nRedis restart without data: {fig}, group recreated {recreated} time(s)")
            assert fig["lost"] == 0 and fig["answered_twice"] == 0 and recreated >= 1
        finally:
            server.stop()
    finally:
        w.stop()
