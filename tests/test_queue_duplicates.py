"""One answer per job id when a job id is submitted twice (a producer's retry), with a
real redis-server, real clips and the tiny model (workers in threads).

* The second entry never takes the job id's lock from the first, not even inside
  the same worker: the job is scored once.
* The second entry waits while the first is scored (here or by another worker),
  however long that takes: it is never dead-lettered while the lock is held, and
  it is answered from the real result, its note marked ``duplicate``.
* A dead letter is written only while the job id is unlocked and unanswered, and
  a duplicate's reply, note and acknowledgement are written together or not at all.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry

from monitor import keys
from monitor.config import QueueSettings
from monitor.core.embed import Embedder
from monitor.media.decode import DecodeLimits
from monitor.metrics import QueueMetrics
from monitor.queue import (
    ClipScorer,
    Job,
    Worker,
    WorkerHooks,
    ensure_group,
    get_result,
)
from monitor.queue.jobs import Entry

from .media import write_clip
from .queue_helpers import FAST_QUEUE, running_worker, submit_replying, wait_for

MAX_DELIVERIES = int(FAST_QUEUE["max_deliveries"])


@pytest.fixture
def scorer(tiny_embedder: Embedder) -> ClipScorer:
    return ClipScorer(tiny_embedder, None, DecodeLimits(max_pixels=10_000))


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dups") / "a.mp4"
    write_clip(path, fps=30, n_frames=60)
    return path


submit = submit_replying


class Gate:
    """A ``before_score`` hook: the first scoring of a job waits until opened."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.entered = threading.Event()
        self.open = threading.Event()

    def __call__(self, job: Job, attempt: int) -> None:
        self.calls.append(attempt)
        if len(self.calls) == 1:
            self.entered.set()
            assert self.open.wait(120), "never opened"

    @contextlib.contextmanager
    def opened_at_exit(self) -> Iterator[None]:
        """Open the gate when the block ends, also on a failure (a job thread left
        waiting would fail a later test when its wait runs out)."""
        try:
            yield
        finally:
            self.open.set()


def mentions(caplog: pytest.LogCaptureFixture, entry_id: str) -> int:
    """How many queue log lines name ``entry_id`` (each delivery of a waiting entry
    logs one)."""
    return sum(entry_id in r.getMessage() for r in list(caplog.records))


def assert_answered_once(client: redis.Redis, job_id: str, entries: int) -> None:
    """Scored once, stored as scored, one note plus a duplicate note per other entry,
    every reply the stored result, nothing dead-lettered, nothing pending."""
    stored = get_result(client, job_id)
    assert stored is not None and stored["status"] == "scored", stored
    assert client.get(keys.runs_key(job_id)) == "1"
    notes = [f for _, f in client.xrange(keys.RESULTS) if f["job_id"] == job_id]
    assert [(n["code"], n.get("duplicate")) for n in notes] == [("", None)] + [
        ("", "1")
    ] * (entries - 1)
    replies = [json.loads(f["result"]) for _, f in client.xrange(f"restrav:replies:{job_id}")]
    assert replies == [stored] * entries
    assert client.xlen(keys.JOBS_DEAD) == 0
    assert client.xpending(keys.JOBS, "workers")["pending"] == 0


def test_second_entry_in_the_same_worker_does_not_take_the_lock_over(
    client: redis.Redis, clip: Path, scorer: ClipScorer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="restrav.queue")
    ensure_group(client, "workers")
    first = submit(client, clip, "twice")
    second = submit(client, clip, "twice")  # the producer retried
    gate = Gate()
    with running_worker(client, scorer, name="w", hooks=WorkerHooks(gate), concurrency=2), \
            gate.opened_at_exit():
        assert gate.entered.wait(60)
        # the other entry is delivered again and again while one is scored (before the
        # fix it took the lock over and was scored beside it); with two slots either
        # entry may be the one scored first
        wait_for(
            lambda: max(mentions(caplog, first), mentions(caplog, second)) > MAX_DELIVERIES
            or len(gate.calls) > 1,
            60,
            "the other entry waiting past max_deliveries",
        )
        gate.open.set()
        wait_for(lambda: client.xpending(keys.JOBS, "workers")["pending"] == 0, 60, "both acked")
    assert len(gate.calls) == 1
    assert_answered_once(client, "twice", entries=2)


def test_duplicate_waiting_on_another_worker_is_never_dead_lettered(
    client: redis.Redis, clip: Path, scorer: ClipScorer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="restrav.queue")
    ensure_group(client, "workers")
    submit(client, clip, "long")
    gate = Gate()
    with running_worker(client, scorer, name="owner", hooks=WorkerHooks(gate)), \
            gate.opened_at_exit():
        assert gate.entered.wait(60)
        second = submit(client, clip, "long")
        with running_worker(client, scorer, name="other"):
            # the owner scores far longer than max_deliveries visibility timeouts
            wait_for(
                lambda: mentions(caplog, second) > MAX_DELIVERIES
                or client.exists(keys.result_key("long")),
                60,
                "the duplicate delivered past max_deliveries",
            )
            gate.open.set()
            wait_for(
                lambda: client.xpending(keys.JOBS, "workers")["pending"] == 0, 60, "both acked"
            )
    assert_answered_once(client, "long", entries=2)


def fetch_entry(worker: Worker) -> Entry:
    (entry,) = worker.fetcher.fetch(1, block=False)
    return entry


def idle_worker(client: redis.Redis, scorer: Any, name: str = "w") -> Worker:
    """A worker whose entries the test hands to ``process`` itself (no read loop)."""
    settings = QueueSettings(**FAST_QUEUE)
    return Worker(client, settings, scorer, QueueMetrics(CollectorRegistry()), name=name)


def test_dead_letter_waits_for_a_live_owner_and_yields_to_its_answer(
    client: redis.Redis, clip: Path, scorer: ClipScorer
) -> None:
    ensure_group(client, "workers")
    entry_id = submit(client, clip, "raced")
    worker = idle_worker(client, scorer)
    entry = fetch_entry(worker)
    entry.deliveries = MAX_DELIVERIES + 1  # delivered too often (its workers crashed)
    # another entry of the job id is being scored by a live worker: no dead letter
    client.set(keys.lock_key("raced"), "owner 1234 abcd", px=60_000)
    worker.process(entry)
    assert not client.exists(keys.result_key("raced"))
    assert client.xlen(keys.JOBS_DEAD) == 0 and client.xlen(keys.RESULTS) == 0
    assert client.xpending(keys.JOBS, "workers")["pending"] == 1
    # the owner answers between this worker's look at the result and its dead letter:
    # the dead entry gets that answer, marked duplicate, and no dead-letter note or reply
    owner = {"job_id": "raced", "entry_id": "1-0", "ok": True, "status": "scored"}
    client.set(keys.result_key("raced"), json.dumps(owner))
    client.delete(keys.lock_key("raced"))
    assert worker.answers.dead_letter(entry)
    assert get_result(client, "raced") == owner
    notes = [f for _, f in client.xrange(keys.RESULTS)]
    assert notes == [
        {"job_id": "raced", "entry_id": entry_id, "ok": "1", "code": "", "duplicate": "1"}
    ]
    replies = [json.loads(f["result"]) for _, f in client.xrange("restrav:replies:raced")]
    assert replies == [owner]
    assert client.xlen(keys.JOBS_DEAD) == 0
    assert client.xpending(keys.JOBS, "workers")["pending"] == 0


def test_duplicate_answer_is_written_whole_or_not_at_all(
    client: redis.Redis, clip: Path, scorer: ClipScorer
) -> None:
    ensure_group(client, "workers")
    submit(client, clip, "dup")
    owner = {"job_id": "dup", "entry_id": "1-0", "ok": True, "status": "scored"}
    client.set(keys.result_key("dup"), json.dumps(owner))
    client.set("restrav:replies:dup", "not a stream")  # the reply cannot be written
    worker = idle_worker(client, scorer)
    entry = fetch_entry(worker)
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        worker.process(entry)
    # nothing of the answer was written: the entry stays pending for a retry
    assert client.xlen(keys.RESULTS) == 0
    assert client.xpending(keys.JOBS, "workers")["pending"] == 1
    client.delete("restrav:replies:dup")
    worker.process(entry)
    assert [f.get("duplicate") for _, f in client.xrange(keys.RESULTS)] == ["1"]
    assert client.xlen("restrav:replies:dup") == 1
    assert client.xpending(keys.JOBS, "workers")["pending"] == 0


def test_an_entry_that_waits_for_a_live_owner_gives_its_delivery_back(
    client: redis.Redis, clip: Path, scorer: ClipScorer
) -> None:
    """A delivery that finds its job id locked by another entry's live owner is no
    failed attempt: the entry's delivery count in Redis goes back to what it was, so
    waiting however long never brings it nearer to the dead-letter stream."""
    ensure_group(client, "workers")
    entry_id = submit(client, clip, "busy")
    worker = idle_worker(client, scorer)
    entry = fetch_entry(worker)
    # delivered a second time (its first worker died before taking the lock)
    client.xclaim(keys.JOBS, "workers", "w", 0, [entry_id], retrycount=2, justid=True)
    entry.deliveries = 2
    client.set(keys.lock_key("busy"), "owner 1234 abcd", px=60_000)
    for _ in range(3):  # each delivery that waits
        worker.process(entry)
        (row,) = client.xpending_range(keys.JOBS, "workers", "-", "+", 10)
        assert (row["message_id"], row["consumer"], row["times_delivered"]) == (
            entry_id, "w", 1)
    assert client.get(keys.lock_key("busy")) == "owner 1234 abcd"
    assert not client.exists(keys.result_key("busy")) and client.xlen(keys.RESULTS) == 0


def test_a_duplicate_of_a_failed_job_is_noted_with_the_failure(
    client: redis.Redis, clip: Path, scorer: ClipScorer
) -> None:
    """A new submission of a job id answered with an error gets that error again, and its
    note says so (``ok`` 0 and the error's code), like the first answer's note."""
    ensure_group(client, "workers")
    entry_id = submit(client, clip, "failed")
    stored = {"job_id": "failed", "entry_id": "1-0", "ok": False, "status": "error",
              "error": {"code": "decode_error", "message": "not a video"}}
    client.set(keys.result_key("failed"), json.dumps(stored))
    worker = idle_worker(client, scorer)
    worker.process(fetch_entry(worker))
    notes = [f for _, f in client.xrange(keys.RESULTS)]
    assert notes == [{"job_id": "failed", "entry_id": entry_id, "ok": "0",
                      "code": "decode_error", "duplicate": "1"}]
    replies = [json.loads(f["result"]) for _, f in client.xrange("restrav:replies:failed")]
    assert replies == [stored]
    assert client.xpending(keys.JOBS, "workers")["pending"] == 0
