"""The clip queue on a real Redis Cluster (3 primaries, 3 replicas on loopback,
``tests/clusterproc.py``), through a ``redis+cluster://`` URL: jobs whose ids fall in
different slots are answered once each (result, note, reply), a job id submitted
again gets a duplicate note and the stored result, an invalid entry is answered,
every write waits for one replica (``WAIT`` per node), and the notes a worker
recorded with its answer but did not write (it died in between) are written by the
entry's next delivery, once."""

from __future__ import annotations

import json
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
from monitor.queue import ClipScorer, Job, JobOptions, Worker, connect, enqueue, ensure_group
from monitor.queue.answer_scripts import ANSWER_IN_SLOT
from monitor.redis_conn import Durability, is_cluster
from tests.clusterproc import ClusterSetup

from .media import write_clip
from .queue_helpers import FAST_QUEUE, running_worker, wait_for

WAIT_ONE = Durability(replicas=1, timeout_ms=5000)


@pytest.fixture
def cluster_client(redis_cluster: ClusterSetup) -> Any:
    c = connect(redis_cluster.url(), read_timeout_s=10)
    assert is_cluster(c)
    ensure_group(c, "workers")
    yield c
    c.close()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cluster") / "a.mp4"
    write_clip(path, fps=30, n_frames=60)
    return path


@pytest.fixture
def scorer(tiny_embedder: Embedder) -> ClipScorer:
    return ClipScorer(tiny_embedder, None, DecodeLimits(max_pixels=10_000))


def submit(client: Any, clip: Path, job_id: str) -> str:
    job = Job(job_id=job_id, source=str(clip), options=JobOptions(hop=12),
              reply_to=f"restrav:replies:{job_id}")
    return enqueue(client, job, QueueSettings(), WAIT_ONE)


def notes_of(client: Any, job_id: str) -> list[dict[str, str]]:
    return [f for _, f in client.xrange(keys.RESULTS) if f["job_id"] == job_id]


def test_the_queue_answers_once_per_job_id_on_a_cluster(
    redis_cluster: ClusterSetup, cluster_client: Any, clip: Path, scorer: ClipScorer
) -> None:
    c = cluster_client
    ids = [f"job-{i}" for i in range(6)]
    slots = {c.keyslot(keys.result_key(j)) for j in ids}
    owners = {redis_cluster.port_of_slot_owner(keys.result_key(j)) for j in ids}
    assert len(slots) == 6 and len(owners) > 1  # the job ids' keys are on several nodes
    for j in ids:
        submit(c, clip, j)
    c.xadd(keys.JOBS, {keys.JOB_FIELD: "{not json"})  # invalid, no job id
    settings = QueueSettings(**FAST_QUEUE)
    metrics = QueueMetrics(CollectorRegistry())
    worker = Worker(c, settings, scorer, metrics, name="w1", durability=WAIT_ONE)
    for _ in range(len(ids) + 1):
        (entry,) = worker.fetcher.fetch(1, block=False)
        worker.process(entry)
    submit(c, clip, ids[0])  # the producer's retry: answered from the stored result
    (entry,) = worker.fetcher.fetch(1, block=False)
    worker.process(entry)
    for j in ids:
        stored = json.loads(c.get(keys.result_key(j)))
        assert stored["status"] == "scored" and c.get(keys.runs_key(j)) == "1"
        want = [None, "1"] if j == ids[0] else [None]
        assert [n.get("duplicate") for n in notes_of(c, j)] == want
        replies = [json.loads(f["result"]) for _, f in c.xrange(f"restrav:replies:{j}")]
        assert replies == [stored] * len(want)
        assert c.get(keys.notes_key(j)) is None and c.get(keys.lock_key(j)) is None
    assert [n["code"] for n in notes_of(c, "")] == ["invalid_job"]
    assert c.xpending(keys.JOBS, "workers")["pending"] == 0


def test_a_worker_thread_answers_on_a_cluster(
    cluster_client: Any, clip: Path, scorer: ClipScorer
) -> None:
    """The read loop, heartbeat (lock renewal in two steps) and answers together."""
    c = cluster_client
    ids = [f"t-{i}" for i in range(4)]
    for j in ids:
        submit(c, clip, j)
    with running_worker(c, scorer, name="w2"):
        wait_for(lambda: all(notes_of(c, j) for j in ids), what="every job answered")
    assert all(len(notes_of(c, j)) == 1 for j in ids)
    assert c.xpending(keys.JOBS, "workers")["pending"] == 0


def test_notes_left_by_a_dead_worker_are_written_on_the_next_delivery(
    cluster_client: Any, clip: Path, scorer: ClipScorer
) -> None:
    c = cluster_client
    entry_id = submit(c, clip, "crashed")
    worker = Worker(c, QueueSettings(**FAST_QUEUE), scorer, QueueMetrics(CollectorRegistry()),
                    name="w3")
    (entry,) = worker.fetcher.fetch(1, block=False)
    # what a worker killed after its answer's first step leaves: result and notes
    # stored in the job id's slot; nothing noted, replied or acknowledged
    body = json.dumps({"job_id": "crashed", "entry_id": entry_id, "ok": True,
                       "status": "scored"})
    notes = {"reply_to": "restrav:replies:crashed", "result": body, "dead": None,
             "note": ["job_id", "crashed", "entry_id", entry_id, "ok", "1", "code", ""]}
    c.register_script(ANSWER_IN_SLOT)(
        keys=[keys.result_key("crashed"), keys.lock_key("crashed"), keys.notes_key("crashed")],
        args=[body, 60, "", "fenced", json.dumps(notes)],
    )
    worker.process(entry)  # delivered again: finds the result, writes the notes
    assert [n["entry_id"] for n in notes_of(c, "crashed")] == [entry_id]
    assert [f["result"] for _, f in c.xrange("restrav:replies:crashed")] == [body]
    assert c.get(keys.notes_key("crashed")) is None
    assert c.xpending(keys.JOBS, "workers")["pending"] == 0
    assert c.get(keys.runs_key("crashed")) is None  # not scored again


def test_a_reply_stream_of_the_wrong_type_does_not_block_the_answer(
    cluster_client: Any, clip: Path, scorer: ClipScorer
) -> None:
    c = cluster_client
    submit(c, clip, "wrongtype")
    c.set("restrav:replies:wrongtype", "not a stream")
    worker = Worker(c, QueueSettings(**FAST_QUEUE), scorer, QueueMetrics(CollectorRegistry()),
                    name="w4")
    (entry,) = worker.fetcher.fetch(1, block=False)
    worker.process(entry)
    assert len(notes_of(c, "wrongtype")) == 1
    assert c.xpending(keys.JOBS, "workers")["pending"] == 0
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        c.xlen("restrav:replies:wrongtype")


def test_an_answer_tried_again_does_not_repeat_the_notes_written_by_the_first_try(
    cluster_client: Any, clip: Path, scorer: ClipScorer
) -> None:
    """A try whose notes were written but not acknowledged by a replica (NOTREPLICATED)
    is tried again: the result is found stored (this very body) and the notes record
    still there; the notes already in their streams are not written twice."""
    c = cluster_client
    entry_id = submit(c, clip, "again")
    worker = Worker(c, QueueSettings(**FAST_QUEUE), scorer, QueueMetrics(CollectorRegistry()),
                    name="w5")
    (entry,) = worker.fetcher.fetch(1, block=False)
    result = worker.answers.base(entry, "again", str(clip))
    result.update({"ok": True, "status": "scored"})
    assert worker.answers.publish(entry, result, "restrav:replies:again")
    # as if the first try had raised NOTREPLICATED before deleting its record
    body = json.dumps(result)
    notes = {"reply_to": "restrav:replies:again", "result": body, "dead": None,
             "note": ["job_id", "again", "entry_id", entry_id, "ok", "1", "code", ""]}
    c.set(keys.notes_key("again"), json.dumps(notes))
    assert worker.answers.publish(entry, result, "restrav:replies:again")
    assert len(notes_of(c, "again")) == 1
    assert c.xlen("restrav:replies:again") == 1
    assert c.get(keys.notes_key("again")) is None
