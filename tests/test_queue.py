"""The clip queue in one process: a real redis-server, real clips, the tiny model.

Workers here run in threads of the test process (cheap to start); the tests
with several worker processes, SIGKILL and crashes are in test_queue_procs.py.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import redis

from monitor import keys
from monitor.config import QueueSettings
from monitor.core.embed import Embedder
from monitor.media.decode import DecodeLimits
from monitor.media.fetch import SourcePolicy, local_source
from monitor.media.safe_input import OpenedFile
from monitor.queue import (
    ClipScorer,
    Job,
    JobOptions,
    QueueFull,
    WorkerHooks,
    enqueue,
    ensure_group,
    get_result,
    queue_stats,
    trim_jobs,
    wait_results,
)
from workers.cli import main as cli_main

from .media import write_clip
from .queue_helpers import (
    http_server,
    jobs,
    make_bad_inputs,
    running_worker,
    sample,
    wait_for,
)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("qclips")
    write_clip(d / "a.mp4", fps=30, n_frames=90)
    write_clip(d / "b.mp4", fps=25, n_frames=75, motion="jitter")
    write_clip(d / "slow.mp4", fps=8, n_frames=24)  # 8 fps: every window is flagged
    return d


@pytest.fixture
def scorer(tiny_embedder: Embedder) -> ClipScorer:
    return ClipScorer(tiny_embedder, None, DecodeLimits(max_pixels=10_000))


def submit(client: redis.Redis, source: str, job_id: str, **options: Any) -> str:
    job = Job(
        job_id=job_id,
        source=source,
        options=JobOptions(**options),
        reply_to=f"restrav:replies:{job_id}",
    )
    return enqueue(client, job, QueueSettings())


def results_of(client: redis.Redis, ids: list[str], timeout_s: float = 60) -> dict[str, Any]:
    return wait_for(
        lambda: (
            {i: get_result(client, i) for i in ids}
            if all(client.exists(keys.result_key(i)) for i in ids)
            else None
        ),
        timeout_s,
        f"results of {ids}",
    )


# --- payload validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        {"job_id": "", "source": "/a.mp4"},
        {"job_id": "has space", "source": "/a.mp4"},
        {"job_id": "x" * 200, "source": "/a.mp4"},
        {"job_id": "ok", "source": ""},
        {"job_id": "ok", "source": "/a.mp4", "extra": 1},
        {"job_id": "ok", "source": "/a.mp4", "options": {"hop": 0}},
        {"job_id": "ok", "source": "/a.mp4", "reply_to": "somewhere:else"},
    ],
)
def test_job_model_refuses_bad_payloads(payload: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Job.model_validate_json(json.dumps(payload))


def test_job_model_defaults() -> None:
    job = Job.model_validate_json('{"job_id": "j-1", "source": "/data/a.mp4"}')
    assert job.options == JobOptions(windows=True, hop=1, classifier=None)
    assert job.reply_to is None


# --- scoring through the queue ------------------------------------------------------------


def test_scores_equal_restrav_score_windows(
    client: redis.Redis,
    clip_dir: Path,
    tiny_model_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The queue's result for a clip equals `restrav score --windows` on it."""
    from monitor.config import load_settings
    from workers.common import build_classifier, build_embedder, decode_limits

    clip = str(clip_dir / "b.mp4")
    assert cli_main(["score", "--windows", "--model", str(tiny_model_dir), "-c", "none", clip]) == 0
    cli = json.loads(capsys.readouterr().out)

    settings = load_settings(None, model={"ref": str(tiny_model_dir)}, classifier={"path": "none"})
    scorer = ClipScorer(
        build_embedder(settings), build_classifier(settings), decode_limits(settings)
    )
    submit(client, clip, "eq-1")
    with running_worker(client, scorer):
        res = results_of(client, ["eq-1"])["eq-1"]
    assert res["ok"] is True and res["status"] == "scored"
    assert res["clip"]["windows"] == cli["windows"]
    assert res["clip"]["window"] == cli["window"]
    assert res["clip"]["video"] == cli["video"]
    assert len(res["clip"]["windows"]) > 1
    # the aggregate without a classifier: scores null, features averaged over the windows
    agg = res["aggregate"]
    assert agg["score_mean"] is None and agg["is_ai"] is None
    assert agg["windows"] == len(cli["windows"])
    mean_theta = sum(w["features"]["theta_mean"] for w in cli["windows"]) / len(cli["windows"])
    assert agg["features_mean"]["theta_mean"] == pytest.approx(mean_theta, rel=1e-12)


def test_result_written_before_ack_and_reply_stream(
    client: redis.Redis, clip_dir: Path, scorer: ClipScorer
) -> None:
    entry = submit(client, str(clip_dir / "a.mp4"), "job-a", hop=4)
    with running_worker(client, scorer) as (_, metrics):
        replies = list(wait_results(client, "restrav:replies:job-a", {"job-a"}, 60))
        wait_for(lambda: jobs(metrics, "scored") == 1, 10, "scored count")
    assert len(replies) == 1
    res = replies[0]
    assert res == get_result(client, "job-a")
    assert res["entry_id"] == entry and res["worker"] == "t1" and res["attempt"] == 1
    assert res["options"] == {"windows": True, "hop": 4, "classifier": None}
    assert 0 < client.ttl(keys.result_key("job-a")) <= QueueSettings().result_ttl_s
    notes = client.xrange(keys.RESULTS)
    assert [(n[1]["job_id"], n[1]["ok"], n[1]["code"]) for n in notes] == [("job-a", "1", "")]
    assert client.xpending(keys.JOBS, "workers")["pending"] == 0
    assert sample(metrics, "restrav_queue_job_duration_seconds_sum", outcome="scored") > 0


def test_flagged_windows_are_counted_in_the_aggregate(
    client: redis.Redis, clip_dir: Path, scorer: ClipScorer
) -> None:
    submit(client, str(clip_dir / "slow.mp4"), "slow-fps")
    with running_worker(client, scorer):
        res = results_of(client, ["slow-fps"])["slow-fps"]
    agg = res["aggregate"]
    assert agg["flagged_windows"] == agg["windows"] > 0
    assert agg["basis"].startswith("all windows")


def test_bad_inputs_get_error_results_and_are_acknowledged(
    client: redis.Redis, tmp_path: Path, scorer: ClipScorer, clip_dir: Path
) -> None:
    bad = make_bad_inputs(tmp_path / "bad")
    for name, (source, _) in bad.items():
        submit(client, source, f"bad-{name}")
    # payloads that are not jobs at all, and options this worker refuses
    client.xadd(keys.JOBS, {keys.JOB_FIELD: "{not json"})
    client.xadd(keys.JOBS, {keys.JOB_FIELD: json.dumps({"job_id": "no-source"})})
    client.xadd(keys.JOBS, {"other": "field"})
    client.xadd(keys.JOBS, {keys.JOB_FIELD: json.dumps(
        {"job_id": "bad-field", "source": "/a.mp4", "reply_to": "restrav:replies:bad-field",
         "unknown": 1})})
    submit(client, str(clip_dir / "a.mp4"), "bad-hop", hop=5000)
    submit(client, str(clip_dir / "a.mp4"), "bad-clf", classifier="nope")
    submit(client, str(clip_dir / "a.mp4"), "good-after-bad")
    ids = [f"bad-{n}" for n in bad] + [
        "no-source", "bad-field", "bad-hop", "bad-clf", "good-after-bad"]
    with running_worker(client, scorer) as (worker, metrics):
        got = results_of(client, ids)
        wait_for(lambda: len(client.xrange(keys.RESULTS)) == len(ids) + 2, 10, "notes")
        wait_for(lambda: worker.done == len(ids) + 2, 10, "every entry counted as done")
    for name, (_, code) in bad.items():
        res = got[f"bad-{name}"]
        assert res["ok"] is False and res["error"]["code"] == code, (name, res["error"])
        assert res["error"]["message"]
    assert got["no-source"]["error"]["code"] == "invalid_job"
    assert got["bad-hop"]["error"]["code"] == "invalid_job"
    assert got["bad-clf"]["error"]["code"] == "unknown_classifier"
    assert got["good-after-bad"]["ok"] is True
    assert got["bad-field"]["error"]["code"] == "invalid_job"
    # an invalid payload that names its reply stream is answered there too
    replies = list(wait_results(client, "restrav:replies:bad-field", {"bad-field"}, 10))
    assert replies == [got["bad-field"]]
    # each answer's note says whether it failed and why
    notes = {n[1]["job_id"]: (n[1]["ok"], n[1]["code"]) for n in client.xrange(keys.RESULTS)
             if n[1]["job_id"]}
    assert notes == {i: ("1", "") if got[i]["ok"] else ("0", got[i]["error"]["code"])
                     for i in ids}
    # the two payloads without a job id are answered on the results stream only
    codes = [n[1]["code"] for n in client.xrange(keys.RESULTS) if not n[1]["job_id"]]
    assert codes == ["invalid_job", "invalid_job"]
    assert client.xpending(keys.JOBS, "workers")["pending"] == 0
    assert sample(metrics, "restrav_queue_job_errors_total", code="decode_error") == 2
    assert jobs(metrics, "error") == len(ids) + 2 - 1


def test_same_job_id_is_scored_once(
    client: redis.Redis, clip_dir: Path, scorer: ClipScorer
) -> None:
    submit(client, str(clip_dir / "a.mp4"), "twice", hop=6)
    with running_worker(client, scorer) as (_, metrics):
        first = results_of(client, ["twice"])["twice"]
        submit(client, str(clip_dir / "a.mp4"), "twice", hop=6)
        wait_for(lambda: jobs(metrics, "duplicate") == 1, 30, "duplicate")
        # an invalid payload under the same job id is answered but replaces nothing
        client.xadd(keys.JOBS, {keys.JOB_FIELD: json.dumps({"job_id": "twice", "bad": 1})})
        wait_for(lambda: jobs(metrics, "error") == 1, 30, "invalid payload answered")
    assert get_result(client, "twice") == first
    notes = [n[1] for n in client.xrange(keys.RESULTS)]
    assert [n["code"] for n in notes] == ["", "", "invalid_job"]
    # the repeat leaves a note too, marked, with the stored result's outcome
    assert [n.get("duplicate") for n in notes] == [None, "1", None]
    assert notes[1]["job_id"] == "twice" and notes[1]["ok"] == "1"
    assert client.get(keys.runs_key("twice")) == "1"
    replies = client.xrange("restrav:replies:twice")
    assert [json.loads(r[1]["result"]) for r in replies] == [first, first]
    assert client.xpending(keys.JOBS, "workers")["pending"] == 0


def test_a_job_that_raises_is_retried_then_dead_lettered(
    client: redis.Redis, clip_dir: Path, scorer: ClipScorer
) -> None:
    calls: list[int] = []

    def buggy(path: OpenedFile, options: JobOptions, shown: str) -> dict[str, Any]:
        if "boom" in shown:
            calls.append(1)
            raise RuntimeError("a bug in scoring")
        return scorer(path, options, shown)

    (clip_dir / "boom.mp4").write_bytes((clip_dir / "a.mp4").read_bytes())
    submit(client, str(clip_dir / "boom.mp4"), "boom")
    submit(client, str(clip_dir / "a.mp4"), "fine", hop=8)
    with running_worker(client, buggy, max_deliveries=2) as (_, metrics):
        res = results_of(client, ["boom", "fine"])
        wait_for(lambda: sample(metrics, "restrav_queue_dead_lettered_total") == 1, 10, "dead")
    assert len(calls) == 2  # max_deliveries attempts, then no more
    assert res["fine"]["ok"] is True
    assert res["boom"]["error"]["code"] == "dead_lettered"
    assert res["boom"]["last_error"]["code"] == "internal"
    dead = client.xrange(keys.JOBS_DEAD)
    assert len(dead) == 1
    fields = dead[0][1]
    assert json.loads(fields[keys.JOB_FIELD])["job_id"] == "boom"
    assert fields["deliveries"] == "2"
    assert json.loads(fields["last_error"]) == {
        "code": "internal",
        "message": "RuntimeError: a bug in scoring",
    }
    assert client.xpending(keys.JOBS, "workers")["pending"] == 0
    assert client.hlen(keys.JOBS_ERRORS) == 0
    assert sample(metrics, "restrav_queue_job_errors_total", code="internal") == 2


def test_worker_pulls_only_what_it_works_on(
    client: redis.Redis, clip_dir: Path, scorer: ClipScorer
) -> None:
    gate = threading.Event()
    started: list[str] = []

    def gated(job: Job, attempt: int) -> None:
        started.append(job.job_id)
        gate.wait(30)

    for i in range(6):
        submit(client, str(clip_dir / "a.mp4"), f"bp-{i}", hop=12)
    with running_worker(
        client, scorer, hooks=WorkerHooks(before_score=gated), concurrency=2,
        visibility_timeout_s=30.0,
    ) as (_, metrics):
        wait_for(lambda: len(started) == 2, 30, "two jobs started")
        stats = queue_stats(client, "workers")
        assert stats.pending == 2 and stats.lag == 4
        assert stats.oldest_pending_age_s >= 0
        # the worker's gauges follow, though it has no free slot
        wait_for(lambda: sample(metrics, "restrav_queue_pending") == 2, 10, "pending gauge")
        assert sample(metrics, "restrav_queue_lag") == 4
        assert sample(metrics, "restrav_queue_jobs_in_progress") == 2
        wait_for(
            lambda: sample(metrics, "restrav_queue_oldest_pending_age_seconds") > 0, 10, "age"
        )
        gate.set()
        results_of(client, [f"bp-{i}" for i in range(6)])
        wait_for(lambda: jobs(metrics, "scored") == 6, 10, "six scored")
    stats = queue_stats(client, "workers")
    assert stats.pending == 0 and stats.lag == 0


def test_restart_finishes_own_pending_first(
    client: redis.Redis, clip_dir: Path, scorer: ClipScorer
) -> None:
    ensure_group(client, "workers")
    submit(client, str(clip_dir / "a.mp4"), "orphan", hop=12)
    # a previous life of worker t1 took the job and died before answering
    client.xreadgroup("workers", "t1", {keys.JOBS: ">"}, count=1)
    with running_worker(client, scorer, visibility_timeout_s=60.0, heartbeat_interval_s=1.0):
        res = results_of(client, ["orphan"], timeout_s=30)["orphan"]
    assert res["ok"] is True and res["attempt"] == 2 and res["worker"] == "t1"


def test_stalled_job_is_reclaimed_by_another_worker(
    client: redis.Redis, clip_dir: Path, scorer: ClipScorer
) -> None:
    ensure_group(client, "workers")
    submit(client, str(clip_dir / "a.mp4"), "stalled", hop=12)
    client.xreadgroup("workers", "gone", {keys.JOBS: ">"}, count=1)
    with running_worker(client, scorer, name="alive") as (_, metrics):
        res = results_of(client, ["stalled"], timeout_s=30)["stalled"]
    assert res["worker"] == "alive" and res["attempt"] == 2
    assert sample(metrics, "restrav_queue_reclaimed_total") == 1
    assert client.xpending(keys.JOBS, "workers")["pending"] == 0


def test_graceful_stop_releases_an_unfinished_job(
    client: redis.Redis, clip_dir: Path, scorer: ClipScorer
) -> None:
    gate = threading.Event()
    hooks = WorkerHooks(before_score=lambda job, attempt: gate.wait(30))
    submit(client, str(clip_dir / "a.mp4"), "held", hop=12)
    with running_worker(
        client, scorer, hooks=hooks, shutdown_grace_s=0.2, visibility_timeout_s=30.0
    ) as (worker, metrics):
        wait_for(lambda: worker.inflight, 30, "job in flight")
    # released: reclaimable at once, though the visibility timeout is 30 s, and its
    # job id's lock is gone (a worker of another name may take it now)
    assert not client.exists(keys.lock_key("held"))
    rows = client.xpending_range(keys.JOBS, "workers", "-", "+", 10)
    assert len(rows) == 1 and rows[0]["time_since_delivered"] >= 30_000
    assert jobs(metrics, "released") == 1
    assert not client.exists(keys.heartbeat_key("t1"))
    gate.set()
    with running_worker(client, scorer, name="next") as _:
        res = results_of(client, ["held"], timeout_s=30)["held"]
    assert res["ok"] is True and res["worker"] == "next"
    assert res["attempt"] == 1  # the release gave its delivery back


def test_heartbeat_and_cli_check(
    client: redis.Redis, redis_url: str, clip_dir: Path, scorer: ClipScorer
) -> None:
    args = ["worker", "--check", "--name", "t1", "--redis-url", redis_url]
    assert cli_main(args) == 1  # no worker yet
    with running_worker(client, scorer, heartbeat_interval_s=0.2):
        wait_for(lambda: client.exists(keys.heartbeat_key("t1")), 10, "heartbeat")
        beat = json.loads(client.get(keys.heartbeat_key("t1")) or "{}")
        assert beat["worker"] == "t1" and beat["jobs"] == []
        assert cli_main([*args, "--config", str(_fast_config(clip_dir))]) == 0
    assert cli_main(args) == 1  # stopped: heartbeat removed


def _fast_config(d: Path) -> Path:
    cfg = d / "fast.yaml"
    cfg.write_text("queue:\n  heartbeat_interval_s: 0.2\n  visibility_timeout_s: 1.0\n")
    return cfg


# --- trimming, admission ------------------------------------------------------------------


def test_trimming_never_drops_unacknowledged_entries(client: redis.Redis) -> None:
    ensure_group(client, "workers")
    ids = [client.xadd(keys.JOBS, {"job": str(i)}) for i in range(1000)]
    read = client.xreadgroup("workers", "c", {keys.JOBS: ">"}, count=700)[0][1]
    assert len(read) == 700
    client.xack(keys.JOBS, "workers", *ids[:650])  # 650..699 pending, 700.. undelivered
    removed = trim_jobs(client)
    assert removed > 0
    left = {e[0] for e in client.xrange(keys.JOBS)}
    assert set(ids[650:]) <= left
    assert client.xpending(keys.JOBS, "workers")["pending"] == 50
    # a second group that has read nothing holds everything back
    client.xgroup_create(keys.JOBS, "other", id="0")
    assert trim_jobs(client) == 0


def test_enqueue_refuses_beyond_max_queue_length(client: redis.Redis) -> None:
    settings = QueueSettings(max_queue_length=3)
    for i in range(3):
        enqueue(client, Job(job_id=f"q{i}", source="/a.mp4"), settings)
    with pytest.raises(QueueFull):
        enqueue(client, Job(job_id="q3", source="/a.mp4"), settings)


# --- sources: local roots, URLs -----------------------------------------------------------


def test_local_roots_and_disabled_local_paths(clip_dir: Path, tmp_path: Path) -> None:
    from monitor.errors import UnsupportedSource

    inside = SourcePolicy(local_roots=(clip_dir,))
    with local_source(str(clip_dir / "a.mp4"), inside, 10**9) as p:
        assert p.path == clip_dir / "a.mp4"
    # a link under an allowed root that points outside it is refused
    root = tmp_path / "root"
    root.mkdir()
    (root / "escape.mp4").symlink_to(tmp_path / "outside.mp4")
    (tmp_path / "outside.mp4").write_bytes(b"x")
    rooted = SourcePolicy(local_roots=(root,))
    with pytest.raises(UnsupportedSource), local_source(str(root / "escape.mp4"), rooted, 10**9):
        pass
    with pytest.raises(UnsupportedSource), local_source(str(clip_dir / "a.mp4"), rooted, 10**9):
        pass
    with pytest.raises(UnsupportedSource), local_source(f"{root}/../outside.mp4", rooted, 10**9):
        pass
    with pytest.raises(UnsupportedSource), local_source(
        str(clip_dir / "a.mp4"), SourcePolicy(allow_local_paths=False), 10**9
    ):
        pass
    with pytest.raises(UnsupportedSource), local_source(
        f"file://{clip_dir / 'a.mp4'}", SourcePolicy(), 10**9
    ):
        pass


def test_url_sources_within_policy(
    client: redis.Redis, clip_dir: Path, scorer: ClipScorer, tmp_path: Path
) -> None:
    (tmp_path / "big.bin").write_bytes(b"\0" * 300_000)
    (tmp_path / "a.mp4").write_bytes((clip_dir / "a.mp4").read_bytes())
    loopback = SourcePolicy(
        allowed_url_schemes=("http",), allow_private_addresses=True, max_download_bytes=200_000
    )
    with http_server(tmp_path) as base:
        submit(client, f"{base}/a.mp4", "url-ok", hop=12)
        submit(client, f"{base}/nothing.mp4", "url-404")
        submit(client, f"{base}/big.bin", "url-big")
        submit(client, "https://user:secret@example.com/x.mp4?token=abc", "url-scheme")
        with running_worker(client, scorer, policy=loopback):
            got = results_of(client, ["url-ok", "url-404", "url-big", "url-scheme"])
        # the same loopback URL with the default policy (no private addresses)
        submit(client, f"{base}/a.mp4", "url-private")
        with running_worker(
            client, scorer, policy=SourcePolicy(allowed_url_schemes=("http",)), name="t2"
        ):
            got.update(results_of(client, ["url-private"]))
    assert got["url-ok"]["ok"] is True
    assert got["url-ok"]["clip"]["path"] == f"{base}/a.mp4"
    assert got["url-404"]["error"]["code"] == "not_found"
    assert got["url-big"]["error"]["code"] == "too_large"
    assert got["url-scheme"]["error"]["code"] == "unsupported_source"
    assert got["url-private"]["error"]["code"] == "unsupported_source"
    # credentials never stored
    raw = json.dumps(got["url-scheme"])
    assert "secret" not in raw and "abc" not in raw
    # the downloaded clip scores like the local file
    local = scorer(clip_dir / "a.mp4", JobOptions(hop=12), "x")
    assert got["url-ok"]["clip"]["windows"] == local["clip"]["windows"]


HTTP_ONLY = SourcePolicy(allowed_url_schemes=("http",))


@pytest.mark.parametrize(
    ("url", "policy"),
    [
        ("http://example.com/a.mp4", SourcePolicy()),
        (
            "http://other.example/a.mp4",
            SourcePolicy(allowed_url_schemes=("http",), allowed_url_hosts=("example.com",)),
        ),
        ("gopher://example.com/a", SourcePolicy(allowed_url_schemes=("gopher",))),
        ("http://169.254.169.254/latest", HTTP_ONLY),
        ("http://10.0.0.7/a.mp4", HTTP_ONLY),
        ("http://[::1]:8080/a.mp4", HTTP_ONLY),
        ("http://localhost/a.mp4", HTTP_ONLY),
        ("http://user:pw@127.0.0.1/a.mp4", HTTP_ONLY),
    ],
)
def test_url_policy_refusals(url: str, policy: SourcePolicy) -> None:
    """Refused before any connection: scheme, host list, internal addresses (no network)."""
    from monitor.errors import InputError

    with pytest.raises(InputError) as info, local_source(url, policy, 10**6):
        pass
    assert info.value.code == "unsupported_source"
    assert "pw@" not in info.value.message
