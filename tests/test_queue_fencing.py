"""One answer per job id, and a worker that survives Redis losing its data (in-process,
real redis-server): the lean versions of the chaos scenarios in tests/chaos/.

* A worker that held a job past the visibility timeout (paused, cut off) answers
  late: its answer is discarded and counted, the reply stream gets one answer.
  Taken over while it still runs (it answers before the new owner does), its
  answer writes nothing and the new owner's lock survives.
* The same entry delivered again after its answer was written (the
  acknowledgement lost) is acknowledged without a second reply.
* A worker deletes a job id's lock only while it holds its own token (after an
  internal error, at shutdown): never the lock of the worker that took over.
  A lock left under its name by an earlier run (a restart) is taken over.
* An answer refused by a Redis that cannot take writes (OOM) is retried until
  Redis takes it, not thrown away.
* Redis restarted without its data (FLUSHALL: the group is gone): the worker
  recreates the group, says so, and keeps answering; ``worker_health`` reports
  the missing group and a read loop that only fails.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from monitor import keys
from monitor.config import QueueSettings
from monitor.core.embed import Embedder
from monitor.media.decode import DecodeLimits
from monitor.media.safe_input import OpenedFile
from monitor.metrics import QueueMetrics
from monitor.queue import (
    ClipScorer,
    Entry,
    Job,
    JobOptions,
    Worker,
    WorkerHooks,
    ensure_group,
    get_result,
    queue_stats,
    worker_health,
)

from .media import write_clip
from .queue_helpers import (
    FAST_QUEUE,
    in_thread,
    running_worker,
    sample,
    submit_replying,
    wait_for,
)


@pytest.fixture
def scorer(tiny_embedder: Embedder) -> ClipScorer:
    return ClipScorer(tiny_embedder, None, DecodeLimits(max_pixels=10_000))


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fence") / "a.mp4"
    write_clip(path, fps=30, n_frames=60)
    return path


submit = submit_replying


def test_late_answer_is_discarded_and_counted(
    client: redis.Redis, clip: Path, scorer: ClipScorer, caplog: pytest.LogCaptureFixture
) -> None:
    ensure_group(client, "workers")
    submit(client, clip, "late")
    taken = threading.Event()
    go_on = threading.Event()

    def pause(job: Job, attempt: int) -> None:
        taken.set()
        assert go_on.wait(60), "never resumed"

    # worker A takes the job and stops (no heartbeat, as under SIGSTOP) until released
    settings = QueueSettings(**FAST_QUEUE)
    metrics_a = QueueMetrics(CollectorRegistry())
    a = Worker(client, settings, scorer, metrics_a, name="paused", hooks=WorkerHooks(pause))
    (entry,) = a.fetcher.fetch(1, block=False)
    runner = threading.Thread(target=a.process, args=(entry,), daemon=True)
    runner.start()
    assert taken.wait(60)
    # B reclaims it after the visibility timeout, scores it and answers
    with running_worker(client, scorer, name="alive"):
        wait_for(lambda: client.exists(keys.result_key("late")), 60, "B's answer")
    go_on.set()
    runner.join(60)
    assert not runner.is_alive()
    stored = json.loads(client.get(keys.result_key("late")) or "{}")
    assert stored["worker"] == "alive"
    replies = client.xrange("restrav:replies:late")
    assert len(replies) == 1, replies
    notes = [f for _, f in client.xrange(keys.RESULTS) if f["job_id"] == "late"]
    assert len(notes) == 1, notes
    assert int(client.get(keys.runs_key("late")) or 0) == 2  # scored twice, answered once
    assert sample(metrics_a, "restrav_queue_late_answers_total") == 1
    assert sample(metrics_a, "restrav_queue_jobs_total", outcome="scored") == 0
    assert client.xpending(keys.JOBS, "workers")["pending"] == 0
    assert late_answers_logged(caplog) == [
        f"late answer to job late (entry {entry.id}, attempt 1) discarded: the job id is "
        "answered already (this worker held it past the visibility timeout)"]


def late_answers_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "restrav.queue" and r.getMessage().startswith("late answer")]


def test_redelivered_answered_entry_gets_no_second_reply(
    client: redis.Redis, clip: Path, scorer: ClipScorer
) -> None:
    ensure_group(client, "workers")
    entry_id = submit(client, clip, "again")
    client.xreadgroup("workers", "gone", {keys.JOBS: ">"}, count=1)
    # the answer was written, the acknowledgement was lost (e.g. Redis restarted from AOF)
    client.set(keys.result_key("again"), json.dumps({"job_id": "again", "entry_id": entry_id}))
    with running_worker(client, scorer, name="alive") as (_, metrics):
        wait_for(lambda: client.xpending(keys.JOBS, "workers")["pending"] == 0, 60, "the ack")
        assert sample(metrics, "restrav_queue_jobs_total", outcome="duplicate") == 1
    assert client.xlen("restrav:replies:again") == 0
    assert not client.exists(keys.runs_key("again"))


def idle_worker(
    client: redis.Redis, scorer: Any, name: str, hooks: WorkerHooks | None = None
) -> Worker:
    """A worker whose entries the test hands to ``process`` itself (no read loop)."""
    settings = QueueSettings(**FAST_QUEUE)
    metrics = QueueMetrics(CollectorRegistry())
    return Worker(client, settings, scorer, metrics, name=name, hooks=hooks)


def fetch_entry(worker: Worker) -> Entry:
    (entry,) = worker.fetcher.fetch(1, block=False)
    return entry


def take_over(client: redis.Redis, job_id: str) -> str:
    """Another worker takes the job id's lock (this one was paused past its TTL)."""
    token = "other 0123 4567"
    client.set(keys.lock_key(job_id), token, px=60_000)
    return token


def test_a_job_taken_over_while_its_worker_still_runs_keeps_the_new_owners_answer(
    client: redis.Redis, clip: Path, scorer: ClipScorer, caplog: pytest.LogCaptureFixture
) -> None:
    # The other order of test_late_answer_is_discarded_and_counted: worker A is still
    # scoring when another worker takes the job id's lock over, and A answers before
    # the new owner does. A's fenced answer must write nothing: the new owner's lock
    # survives, no result, note or reply is stored, and the late answer is counted.
    ensure_group(client, "workers")
    submit(client, clip, "taken")
    taken: list[str] = []

    def lose_the_lock(job: Job, attempt: int) -> None:
        taken.append(take_over(client, job.job_id))

    worker = idle_worker(client, scorer, "a", WorkerHooks(lose_the_lock))
    entry = fetch_entry(worker)
    worker.process(entry)
    assert taken, "the hook never ran"
    assert client.get(keys.lock_key("taken")) == taken[0]
    assert get_result(client, "taken") is None
    assert client.xlen("restrav:replies:taken") == 0
    assert [f for _, f in client.xrange(keys.RESULTS) if f["job_id"] == "taken"] == []
    assert sample(worker.metrics, "restrav_queue_late_answers_total") == 1
    assert sample(worker.metrics, "restrav_queue_jobs_total", outcome="scored") == 0
    assert late_answers_logged(caplog) == [
        f"late answer to job taken (entry {entry.id}, attempt 1) discarded: another worker "
        "took the job over (this worker held it past the visibility timeout)"]
    # the entry is left for the new owner to answer and acknowledge
    assert client.xpending(keys.JOBS, "workers")["pending"] == 1


def test_internal_error_keeps_the_new_owners_lock(
    client: redis.Redis, clip: Path, scorer: ClipScorer
) -> None:
    ensure_group(client, "workers")
    submit(client, clip, "bug")
    taken: list[str] = []

    def lose_the_lock(job: Job, attempt: int) -> None:
        taken.append(take_over(client, job.job_id))

    def buggy(path: OpenedFile, options: JobOptions, shown: str) -> dict[str, Any]:
        raise RuntimeError("a bug in scoring")

    worker = idle_worker(client, buggy, "w", WorkerHooks(lose_the_lock))
    worker.process(fetch_entry(worker))
    assert client.hexists(keys.JOBS_ERRORS, client.xrange(keys.JOBS)[0][0])
    assert client.get(keys.lock_key("bug")) == taken[0]


def test_shutdown_release_keeps_the_new_owners_lock(
    client: redis.Redis, clip: Path, scorer: ClipScorer
) -> None:
    ensure_group(client, "workers")
    submit(client, clip, "slow")
    entered, go_on = threading.Event(), threading.Event()
    taken: list[str] = []

    def stuck(job: Job, attempt: int) -> None:
        taken.append(take_over(client, job.job_id))
        entered.set()
        go_on.wait(60)

    try:
        with running_worker(
            client, scorer, name="w", hooks=WorkerHooks(stuck), shutdown_grace_s=0.0
        ) as (_, metrics):
            assert entered.wait(60)
        assert sample(metrics, "restrav_queue_jobs_total", outcome="released") == 1
        assert client.get(keys.lock_key("slow")) == taken[0]
    finally:
        go_on.set()


def test_a_restarted_worker_takes_over_the_lock_left_under_its_name(
    client: redis.Redis, clip: Path, scorer: ClipScorer
) -> None:
    ensure_group(client, "workers")
    # the worker's earlier run died holding the locks (token formats new and old)
    left = {"restart-a": "w 0123abcd 4567", "restart-b": "w 4567"}
    for job_id, token in left.items():
        submit(client, clip, job_id)
        client.set(keys.lock_key(job_id), token, px=60_000)
    worker = idle_worker(client, scorer, "w")
    for entry in worker.fetcher.fetch(2, block=False):
        worker.process(entry)
    for job_id in left:
        stored = get_result(client, job_id)
        assert stored is not None and stored["worker"] == "w" and stored["ok"] is True


def test_an_answer_refused_for_memory_is_retried_until_redis_takes_it(
    client: redis.Redis, clip: Path, scorer: ClipScorer
) -> None:
    ensure_group(client, "workers")
    submit(client, clip, "oom")

    def then_redis_is_full(path: OpenedFile, options: JobOptions, shown: str) -> dict[str, Any]:
        out = scorer(path, options, shown)
        client.config_set("maxmemory", 1)  # noeviction: every write is refused (OOM)
        return out

    worker = idle_worker(client, then_redis_is_full, "w")
    entry = fetch_entry(worker)
    thread, failed = in_thread(lambda: worker.process(entry))
    try:
        wait_for(
            lambda: sample(worker.metrics, "restrav_queue_redis_errors_total") >= 1
            or not thread.is_alive(),
            60,
            "a refused answer",
        )
    finally:
        client.config_set("maxmemory", 0)
    thread.join(60)
    assert not thread.is_alive() and not failed, failed
    stored = get_result(client, "oom")
    assert stored is not None and stored["status"] == "scored"
    assert client.get(keys.runs_key("oom")) == "1"
    assert client.xlen("restrav:replies:oom") == 1
    assert client.xpending(keys.JOBS, "workers")["pending"] == 0


def test_worker_recreates_a_lost_group(
    client: redis.Redis, clip: Path, scorer: ClipScorer
) -> None:
    with running_worker(client, scorer, name="w") as (_, metrics):
        submit(client, clip, "before")
        wait_for(lambda: client.exists(keys.result_key("before")), 60, "first answer")
        client.flushall()  # Redis restarted without its data: stream and group are gone
        submit(client, clip, "after")  # a producer's XADD recreates the stream, not the group
        wait_for(lambda: client.exists(keys.result_key("after")), 60, "answer after the loss")
        assert sample(metrics, "restrav_queue_group_recreated_total") >= 1
        assert sample(metrics, "restrav_queue_worker_failing") == 0
        wait_for(lambda: worker_health(client, "w", "workers", 1.0)[0], 30, "healthy again")


def test_check_and_stats_report_a_missing_group(client: redis.Redis) -> None:
    now = time.time()
    beat = {"beat_at": now, "loop_at": now, "failing_since": None}
    client.set(keys.heartbeat_key("w"), json.dumps(beat))
    client.xadd(keys.JOBS, {"job": "{}"})  # a job queued, no group (lost with Redis's data)
    stats = queue_stats(client, "workers")
    assert stats.lag == 1 and not stats.group_exists
    ok, line = worker_health(client, "w", "workers", 1.0, now)
    assert not ok and "consumer group 'workers'" in line and "missing" in line
    ensure_group(client, "workers")
    assert worker_health(client, "w", "workers", 1.0, now) == (True, "worker w: healthy")


def test_check_reports_a_read_loop_that_only_fails(client: redis.Redis) -> None:
    now = time.time()
    beat = {"beat_at": now, "loop_at": now, "failing_since": now - 10, "last_error": "boom"}
    client.set(keys.heartbeat_key("w"), json.dumps(beat))
    ensure_group(client, "workers")
    ok, line = worker_health(client, "w", "workers", 1.0, now)
    assert not ok and "failed for 10 s: boom" in line
