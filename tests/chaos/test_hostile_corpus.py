"""The hostile corpus (tests/hostile.py, >= 300 files made from the shared clips or
stand-ins made like them)
through `restrav score` and through the queue with real worker processes and a real
redis-server: one JSON answer per file with a documented code, no traceback, no hang,
and the workers never die. Prints its figures (recorded in RELIABILITY.md)."""

from __future__ import annotations

import collections
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from monitor import keys
from monitor.config import QueueSettings
from monitor.queue import Job, JobOptions, connect, enqueue, get_result
from tests.conftest import SHARED_CLIPS
from tests.hostile import DOCUMENTED, Case, make_corpus
from tests.media import write_clip
from tests.queue_helpers import wait_for
from tests.test_queue_procs import Workers

ROOT = Path(__file__).resolve().parents[2]
MAX_PIXELS = "1000000"
SCORE_TIMEOUT_S = 1800
QUEUE_TIMEOUT_S = 1800
# each path's own wait bounds it, not pytest's default 300 s
pytestmark = [pytest.mark.chaos, pytest.mark.timeout(SCORE_TIMEOUT_S + 600)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    # made stand-ins replace the shared clips where they are absent (tests/hostile.py)
    cases = make_corpus(tmp_path_factory.mktemp("hostile-corpus"), SHARED_CLIPS, full=True)
    assert len(cases) >= 300
    return cases


def _tally(cases: list[Case], codes: list[str]) -> tuple[collections.Counter[str], list[str]]:
    wrong = [f"{c.name} ({c.path.name}): {code}" for c, code in zip(cases, codes, strict=True)
             if code not in c.codes]
    return collections.Counter(codes), wrong


def _peak_rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def test_corpus_through_restrav_score(corpus: list[Case], tiny_model_dir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "RESTRAV_DECODE__MAX_PIXELS": MAX_PIXELS}
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "workers.cli", "score", "-m", str(tiny_model_dir),
         *(str(c.path) for c in corpus)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=SCORE_TIMEOUT_S, check=False,
    )
    elapsed = time.monotonic() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    codes = ["ok" if o["ok"] else o["error"]["code"] for o in lines]
    counts, wrong = _tally(corpus, codes)
    print(f"\nrestrav score: {len(corpus)} hostile files in {elapsed:.0f} s "
          f"({elapsed / len(corpus):.2f} s/file), exit {proc.returncode}, peak RSS {peak:.0f} MiB, "
          f"tracebacks {proc.stderr.count('Traceback')}, wrong codes {len(wrong)}")
    print("answers: " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
    assert [o["path"] for o in lines] == [str(c.path) for c in corpus]  # one answer each
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert set(codes) <= DOCUMENTED
    assert not wrong, wrong


def test_corpus_through_the_queue(
    corpus: list[Case], redis_url: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    client = connect(redis_url)
    workers = Workers(redis_url, tiny_model_dir, tmp_path)
    # decode.max_pixels 1e6 as for `score` above, a 60 s job deadline, a 4 GiB RSS bound
    env = {"RESTRAV_DECODE__MAX_PIXELS": MAX_PIXELS, "RESTRAV_QUEUE__JOB_TIMEOUT_S": "60",
           "RESTRAV_QUEUE__MAX_RSS_BYTES": str(4 << 30),
           "RESTRAV_QUEUE__VISIBILITY_TIMEOUT_S": "10"}
    try:
        procs = [workers.start(name, **env) for name in ("w1", "w2")]
        workers.wait_ready(client)
        t0 = time.monotonic()
        ids = [f"c{i}" for i in range(len(corpus))]
        for job_id, case in zip(ids, corpus, strict=True):
            enqueue(client, Job(job_id=job_id, source=str(case.path),
                                options=JobOptions(windows=False)), QueueSettings())
        wait_for(lambda: all(client.exists(keys.result_key(i)) for i in ids)
                 or any(p.poll() is not None for p in procs),
                 QUEUE_TIMEOUT_S, "every corpus job answered")
        elapsed = time.monotonic() - t0
        alive = [p.poll() is None for p in procs]
        # the workers still serve an ordinary job afterwards
        good = tmp_path / "good.mp4"
        write_clip(good, fps=25, n_frames=50)
        enqueue(client, Job(job_id="after", source=str(good)), QueueSettings())
        wait_for(lambda: client.exists(keys.result_key("after")), 120, "the job after")
        peaks = [_peak_rss_mib(p.pid) for p in procs]
    finally:
        exits = workers.stop()
    results = [get_result(client, i) for i in ids]
    codes = ["missing" if r is None else ("ok" if r["ok"] else r["error"]["code"])
             for r in results]
    counts, wrong = _tally(corpus, codes)
    durations = sorted(float(r["duration_s"]) for r in results if r is not None)
    logs = "".join((tmp_path / f"{n}.log").read_text(errors="replace") for n in ("w1", "w2"))
    after = get_result(client, "after")
    print(f"\nqueue (2 worker processes): {len(corpus)} hostile jobs in {elapsed:.0f} s, "
          f"job time p50 {durations[len(durations) // 2]:.2f} s / max {durations[-1]:.2f} s, "
          f"workers alive {sum(alive)}/2, exits {exits}, peak RSS "
          f"{' / '.join(f'{p:.0f}' for p in peaks)} MiB, internal errors "
          f"{client.hlen(keys.JOBS_ERRORS)}, wrong codes {len(wrong)}")
    print("answers: " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
    assert all(alive)
    assert after is not None and after["ok"] is True
    assert "Traceback" not in logs, logs
    assert client.hlen(keys.JOBS_ERRORS) == 0
    assert set(codes) <= DOCUMENTED
    assert not wrong, wrong
