"""FFmpeg's error numbers become codes and readable messages: a real RTSP server
(rtsp-server-perl) answering 404 for a path nobody publishes is `not_found`
"the server answered 404 Not Found", not `decode_error` "[Errno 875574520]"."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.errors import InputError
from monitor.media.decode import DecodeLimits, LiveVideo, http_status_of

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


def test_a_server_error_mid_stream_is_named_not_called_corrupt() -> None:
    """An HTTP/RTSP error status after the stream opened (the server failed while frames
    were being read) keeps its readable status, as at opening, and is not reported as
    a corrupt file."""
    import av.error

    from monitor.media.decode import _decoded

    tag = 0xF8 | ord("5") << 8 | ord("X") << 16 | ord("X") << 24

    class FailingContainer:
        def demux(self, stream: object) -> Iterator[object]:
            av.error.err_check(-tag)  # raises what PyAV raises for FFmpeg's 5XX tag
            yield from ()

    with pytest.raises(InputError) as info:
        list(_decoded(FailingContainer(), None, "cam"))
    assert "5xx server error" in info.value.message
    assert "corrupt" not in info.value.message and "Errno" not in info.value.message


def test_a_refused_rtsp_connection_is_unreachable_not_corrupt(tmp_path: Path) -> None:
    """The camera's RTSP server is down (it ran, then stopped: its port refuses): the error
    says the server cannot be reached, not that the input is not a video or corrupt."""
    server = RtspServer(tmp_path / "rtsp-server.log")
    server.start()
    url = server.read_url("cam")
    server.stop()
    with pytest.raises(InputError) as info:
        LiveVideo(url, DecodeLimits(open_timeout_s=20, read_timeout_s=20),
                  {"rtsp_transport": "tcp"}, description="cam")
    err = info.value
    assert err.code == "unreachable", err.to_dict()
    assert "Connection refused" in err.message and "cannot reach the server" in err.message
    assert "corrupt" not in err.message and "not a video" not in err.message
