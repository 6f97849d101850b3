"""A real `restrav serve` hit with raw sockets: malformed HTTP and hostile bodies.

Every bad request gets a 4xx and at most one log line; no log line (at any
level, -vv) holds request bytes, so a bearer token with a stray NUL never
reaches the log; a body nested 2000 levels deep is a 400, not a 500.
Before the fix aiohttp logged each malformed request at ERROR with a
traceback quoting the header line, token included.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from monitor.live.http_guard import JsonTooDeep, json_depth, loads_json

from .redisproc import free_port, wait_port

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "tok-9f3b1c7e-secret"


def exchange(port: int, data: bytes) -> bytes:
    """Send raw bytes, return the status line of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        answer = b""
        while b"\r\n" not in answer:
            chunk = s.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.split(b"\r\n", 1)[0]


def post(path: bytes, body: bytes, auth: bytes = TOKEN.encode()) -> bytes:
    return (b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + auth
            + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


MALFORMED = {
    "token + NUL": b"GET /streams HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
    + TOKEN.encode() + b"\x00\r\n\r\n",
    "token + DEL": b"GET /streams HTTP/1.1\r\nAuthorization: Bearer " + TOKEN.encode()
    + b"\x7f\r\n\r\n",
    "token + CR": b"GET /streams HTTP/1.1\r\nAuthorization: Bearer " + TOKEN.encode()
    + b"\rX: y\r\n\r\n",
    "token in a bad request line": b"GET /streams?token=" + TOKEN.encode() + b" HTTP/9.9\r\n\r\n",
    "TLS hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"A" * 40 + b"\r\n\r\n",
    "no version": b"GET\r\n\r\n",
    "header line too long": b"GET / HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n",
    "bad chunk size": b"POST /streams HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
    b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\nZZ\r\nabc\r\n0\r\n\r\n",
    "CL and TE": b"POST /streams HTTP/1.1\r\nContent-Length: 3\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "bytes in path": b"GET /streams/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
    "NUL in method": b"G\x00T / HTTP/1.1\r\n\r\n",
}


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
    tuple[int, Path]
]:
    tmp = tmp_path_factory.mktemp("hostile")
    port = free_port()
    cfg = {
        "model": {"ref": str(tiny_model_dir), "device": "cpu", "image_size": 112, "threads": 1},
        "serve": {"api": {"port": port, "token": TOKEN}, "sinks": {"stdout": True}},
    }
    (tmp / "serve.yaml").write_text(yaml.safe_dump(cfg))
    log_path = tmp / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "-vv", "serve", "--config",
             str(tmp / "serve.yaml")],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
            stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        assert wait_port(port, 120), log_path.read_text()
        yield port, log_path
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def get_json(port: int, path: str) -> object:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def wait_log(log_path: Path, needle: str, count: int) -> str:
    deadline = time.monotonic() + 30
    while True:
        text = log_path.read_text(errors="replace")
        if text.count(needle) >= count or time.monotonic() > deadline:
            return text
        time.sleep(0.2)


def test_malformed_http_is_a_400_and_one_line_without_request_bytes(
    server: tuple[int, Path]
) -> None:
    port, log_path = server
    before = log_path.read_text(errors="replace").count("refused a malformed HTTP request")
    for name, data in MALFORMED.items():
        status = exchange(port, data)
        assert status.split(b" ")[1:2] == [b"400"], (name, status)
    text = wait_log(log_path, "refused a malformed HTTP request", before + len(MALFORMED))
    assert text.count("refused a malformed HTTP request") == before + len(MALFORMED)
    assert TOKEN not in text  # at -vv: no level logs the header
    assert "Traceback" not in text and " ERROR " not in text
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    assert 'restrav_api_requests_total{code="400",route="malformed"}' in metrics
    assert get_json(port, "/streams") == {"streams": []}  # the server still serves


def test_deeply_nested_json_is_a_400_and_changes_nothing(server: tuple[int, Path]) -> None:
    port, log_path = server
    for body in (b'{"id":' * 2000 + b"1" + b"}" * 2000, b"[" * 5000,
                 b'{"id": "a", "url": "rtsp://h/x", "x": ' + b"[" * 40 + b"]" * 40 + b"}"):
        status = exchange(port, post(b"/streams", body))
        assert status.startswith(b"HTTP/1.1 400"), status
    assert get_json(port, "/streams") == {"streams": []}
    text = log_path.read_text(errors="replace")
    assert "RecursionError" not in text and "Traceback" not in text


def test_json_depth_ignores_brackets_in_strings() -> None:
    assert json_depth(b'{"a": "[[[[{{{{", "b": [1, {"c": []}]}') == 4
    assert json_depth(b'"\\"[[["') == 0
    assert loads_json(b'{"a": [1]}') == {"a": [1]}
    with pytest.raises(JsonTooDeep):
        loads_json(b"[" * 33 + b"]" * 33)
    assert loads_json(b"[" * 32 + b"]" * 32, max_depth=32)
