"""FFmpeg's error numbers become codes and readable messages: a real RTSP server
(rtsp-server-perl) answering 404 for a path nobody publishes is `not_found`
"the server answered 404 Not Found", not `decode_error` "[Errno 875574520]"."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.decode import DecodeLimits, LiveVideo, http_status_of
from monitor.errors import InputError

from .liveproc import need
from .redisproc import free_port, wait_port


@pytest.fixture
def rtsp_port(tmp_path: Path) -> Iterator[int]:
    exe = need("rtsp-server-perl")
    client_port, server_port = free_port(), free_port()
    rtp = 30000 + (os.getpid() * 11) % 20000
    with (tmp_path / "rtsp-server.log").open("wb") as f:
        proc = subprocess.Popen(
            [exe, "--clientport", str(client_port), "--serverport", str(server_port),
             "--rtp_start_port", str(rtp), "--client_listen_address", "127.0.0.1",
             "--source_listen_address", "127.0.0.1"],
            stdout=f, stderr=f,
        )
    try:
        assert wait_port(client_port), "rtsp-server-perl did not start"
        yield client_port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_rtsp_404_is_not_found_with_a_readable_message(rtsp_port: int) -> None:
    url = f"rtsp://127.0.0.1:{rtsp_port}/nobody-publishes-here"
    with pytest.raises(InputError) as info:
        LiveVideo(url, DecodeLimits(open_timeout_s=20, read_timeout_s=20),
                  {"rtsp_transport": "tcp"}, description="cam")
    err = info.value
    assert err.code == "not_found", err.to_dict()
    assert "404 Not Found" in err.message and "Errno" not in err.message


def test_http_status_tags_decode() -> None:
    assert http_status_of(-875574520) == "404"
    assert http_status_of(875574520) == "404"
    assert http_status_of(-2) is None and http_status_of(None) is None
