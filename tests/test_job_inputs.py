"""Hostile job inputs at the queue's edge (audit 14, B, D and G): a NUL byte in a
source, a URL that drips its bytes, a URL whose token would leak through an error
message. A real redis-server, a real loopback HTTP server, real clips, the tiny model.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import ValidationError

from monitor import keys
from monitor.core.embed import Embedder
from monitor.errors import InputError
from monitor.media.decode import DecodeLimits
from monitor.media.fetch import DownloadTimeout, SourcePolicy, download, local_source
from monitor.media.safe_input import open_local
from monitor.queue import ClipScorer, Job

from .media import write_clip
from .queue_helpers import jobs, running_worker, sample, serve_http, wait_for

DRIP_GAP_S = 0.05
"""The drip server sends one byte per gap: 400 bytes take 20 s, 40 times the deadline."""
DRIP_BYTES = 400
DEADLINE_S = 0.5
SECRET = "SECRET123"


class _DripHandler(http.server.BaseHTTPRequestHandler):
    """``/body``: headers at once, then the body one byte per gap; ``/headers``: the
    headers themselves one byte per gap; ``/quick?n=N``: N bytes, one per 10 ms;
    ``/redirect``: a redirect whose Location holds a token and a space."""

    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _drip(self, data: bytes, gap_s: float) -> None:
        for i in range(len(data)):
            self.wfile.write(data[i : i + 1])
            time.sleep(gap_s)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        try:
            if path == "/body":
                self.send_response(200)
                self.send_header("Content-Length", str(DRIP_BYTES))
                self.end_headers()
                self._drip(b"\0" * DRIP_BYTES, DRIP_GAP_S)
            elif path == "/headers":
                self.wfile.write(b"HTTP/1.0 200 OK\r\n")
                self._drip(b"X-Pad: " + b"a" * DRIP_BYTES + b"\r\n\r\n", DRIP_GAP_S)
            elif self.path.startswith("/quick?n="):
                n = int(self.path.rsplit("=", 1)[1])
                self.send_response(200)
                self.send_header("Content-Length", str(n))
                self.end_headers()
                self._drip(b"\1" * n, 0.01)
            elif path == "/redirect":
                self.send_response(302)
                self.send_header("Location", f"/clip.mp4?token={SECRET} x")
                self.end_headers()
            else:
                self.send_error(404)
        except OSError:
            pass  # the client hung up (the deadline cut it)


def drip_server() -> contextlib.AbstractContextManager[str]:
    """The slow HTTP server on loopback; its base URL."""
    return serve_http(_DripHandler)


LOOPBACK = SourcePolicy(
    allowed_url_schemes=("http",),
    allow_private_addresses=True,
    download_timeout_s=5.0,  # per socket operation: each drip gap is far below it
    download_deadline_s=DEADLINE_S,
)


@pytest.fixture
def scorer(tiny_embedder: Embedder) -> ClipScorer:
    return ClipScorer(tiny_embedder, None, DecodeLimits(max_pixels=10_000))


# --- B: control characters in a source ----------------------------------------------------


@pytest.mark.parametrize("bad", ["\x00", "\n", "\r", "\t", "\x1b", "\x7f", "\x85"])
def test_job_model_refuses_control_characters(bad: str) -> None:
    payload = json.dumps({"job_id": "j", "source": f"/data/a{bad}b.mp4"})
    with pytest.raises(ValidationError) as info:
        Job.model_validate_json(payload)
    assert "control character" in str(info.value)


def test_job_model_keeps_ordinary_names() -> None:
    for source in ["/data/my clip.mp4", "/données/vidéo ü.mp4", "https://h/a.mp4?x=1&y=%00"]:
        assert Job(job_id="j", source=source).source == source


def test_open_local_answers_a_nul_byte_as_a_bad_source(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        open_local(f"{tmp_path}/a\x00b.mp4", 10**6)
    assert info.value.code == "unsupported_source"
    assert "NUL" in info.value.message and "\x00" not in info.value.message
    nul = f"{tmp_path}/a\x00.mp4"
    with pytest.raises(InputError) as info, local_source(nul, SourcePolicy(), 1):
        pass
    assert info.value.code == "unsupported_source"


def test_worker_answers_bad_sources_and_keeps_serving(
    client: redis.Redis, scorer: ClipScorer, tmp_path: Path
) -> None:
    """A NUL in a source is `invalid_job`, a dripping download `timeout`, a URL with a
    token and a space `unsupported_source` without the token; none is internal or dead
    lettered, and the worker scores the next job."""
    write_clip(tmp_path / "good.mp4", fps=30, n_frames=90)
    with drip_server() as base:
        payloads: dict[str, dict[str, Any]] = {
            "nul": {"source": f"{tmp_path}/good\x00.mp4"},
            "drip": {"source": f"{base}/body"},
            "leak": {"source": f"{base}/clip.mp4?token={SECRET} x"},
            "good": {"source": str(tmp_path / "good.mp4"), "options": {"hop": 12}},
        }
        for job_id, payload in payloads.items():
            # raw entries: a producer need not use the Job model
            job = {"job_id": job_id, "reply_to": f"restrav:replies:{job_id}", **payload}
            client.xadd(keys.JOBS, {keys.JOB_FIELD: json.dumps(job)})
        with running_worker(client, scorer, policy=LOOPBACK) as (_, metrics):
            got = wait_for(
                lambda: (
                    {i: json.loads(client.get(keys.result_key(i)) or "null") for i in payloads}
                    if all(client.exists(keys.result_key(i)) for i in payloads)
                    else None
                ),
                60,
                "results",
            )
            wait_for(lambda: jobs(metrics, "scored") == 1, 10, "the good job counted")
    codes = {i: (r["error"] or {}).get("code") for i, r in got.items()}
    expected = {"nul": "invalid_job", "drip": "timeout", "leak": "unsupported_source"}
    assert codes == {**expected, "good": None}, got
    assert got["good"]["ok"] is True
    assert "control character" in got["nul"]["error"]["message"]
    assert "download_deadline_s" in got["drip"]["error"]["message"]
    assert sample(metrics, "restrav_queue_job_errors_total", code="invalid_job") == 1
    assert sample(metrics, "restrav_queue_job_errors_total", code="timeout") == 1
    assert sample(metrics, "restrav_queue_job_errors_total", code="internal") == 0
    assert client.xlen(keys.JOBS_DEAD) == 0 and client.hlen(keys.JOBS_ERRORS) == 0
    assert client.xpending(keys.JOBS, "workers")["pending"] == 0
    # G: the token is neither stored nor sent
    stored = str(client.get(keys.result_key("leak")))
    replies = json.dumps(client.xrange("restrav:replies:leak"))
    notes = json.dumps(client.xrange(keys.RESULTS))
    assert SECRET not in stored + replies + notes


# --- D: a download bounded in wall time ---------------------------------------------------


@pytest.mark.parametrize("path", ["/body", "/headers"])
def test_a_dripping_download_is_cut_at_its_deadline(path: str, tmp_path: Path) -> None:
    """Every byte comes well within the per-operation timeout; the whole download does
    not come within the deadline (body or headers dripped)."""
    with drip_server() as base, pytest.raises(DownloadTimeout) as info:
        download(f"{base}{path}?token={SECRET}", tmp_path / "dl", LOOPBACK, 10**6)
    assert info.value.code == "timeout"
    assert "download_deadline_s" in info.value.message
    assert SECRET not in info.value.message


def test_a_slow_download_within_the_deadline_is_whole(tmp_path: Path) -> None:
    policy = SourcePolicy(
        allowed_url_schemes=("http",), allow_private_addresses=True, download_deadline_s=60.0
    )
    with drip_server() as base:
        assert download(f"{base}/quick?n=20", tmp_path / "dl", policy, 10**6) == 20
    assert (tmp_path / "dl").read_bytes() == b"\1" * 20


# --- G: no secret in a download's error messages ------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        f"/clip.mp4?token={SECRET} x",
        f"/clip.mp4?token={SECRET}\x00",
        f"/clip.mp4?token={SECRET}é",  # non-ASCII: http.client raised UnicodeEncodeError
        "/redirect",  # the Location holds the token and a space
    ],
)
def test_download_errors_never_hold_the_token(path: str, tmp_path: Path) -> None:
    with drip_server() as base, pytest.raises(InputError) as info:
        download(f"{base}{path}", tmp_path / "dl", LOOPBACK, 10**6)
    assert SECRET not in info.value.message and SECRET not in str(info.value)
    assert info.value.code == "unsupported_source"
    assert "not a valid URL" in info.value.message


def test_the_worker_policy_carries_every_queue_setting_it_names() -> None:
    """Each SourcePolicy field that is also a `queue` setting comes from the settings
    (download_deadline_s was once left at its default whatever the config said)."""
    import dataclasses

    from monitor.config import load_settings
    from workers.queue_cmd import source_policy

    q = load_settings(None, queue={
        "allow_local_paths": False, "local_roots": ["/clips"], "allowed_url_schemes": ["HTTPS"],
        "allowed_url_hosts": ["cdn.example"], "allow_private_addresses": True,
        "max_download_bytes": 1234, "download_timeout_s": 7.0, "download_deadline_s": 11.0,
    }).queue
    policy = source_policy(q)
    names = [f.name for f in dataclasses.fields(policy)]
    assert all(hasattr(q, n) for n in names), names
    for name in names:
        want = getattr(q, name)
        if name == "allowed_url_schemes":
            want = tuple(s.lower() for s in want)
        assert getattr(policy, name) == want, name
    defaults = type(policy)()
    assert all(getattr(policy, n) != getattr(defaults, n) for n in names), "test values"
