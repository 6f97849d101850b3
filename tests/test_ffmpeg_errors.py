"""FFmpeg's error numbers become codes and readable messages: a real RTSP server
(rtsp-server-perl) answering 404 for a path nobody publishes is `not_found`
"the server answered 404 Not Found", not `decode_error` "[Errno 875574520]"."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.decode import DecodeLimits, LiveVideo, http_status_of
from monitor.errors import InputError

from .liveproc import RtspServer


@pytest.fixture
def rtsp_server(tmp_path: Path) -> Iterator[RtspServer]:
    server = RtspServer(tmp_path / "rtsp-server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_rtsp_404_is_not_found_with_a_readable_message(rtsp_server: RtspServer) -> None:
    url = rtsp_server.read_url("nobody-publishes-here")
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
