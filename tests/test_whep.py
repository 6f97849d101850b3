"""The WHEP client against a real aiortc WHEP server: pull, token, refusal, server restart."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from monitor.metrics import WebRTCMetrics
from monitor.webrtc.tracks import WebRTCError
from monitor.webrtc.whep import WhepSource, same_origin, whep_target
from tests.media import pattern_frame
from tests.webrtc_peers import WhepServer

W, H = 160, 120
FRAMES = [pattern_frame(i, W, H) for i in range(50)]


def value(reg: CollectorRegistry, name: str, **labels: str) -> float:
    v = reg.get_sample_value(name, labels)
    return 0.0 if v is None else v


async def test_whep_pull_with_token_then_delete() -> None:
    server = WhepServer(FRAMES, token="tok")
    await server.start()
    reg = CollectorRegistry()
    src = WhepSource(server.url, "pull1", token="tok", metrics=WebRTCMetrics(reg))
    try:
        await src.connect()
        got = [await asyncio.wait_for(src.recv(), 10) for _ in range(10)]
        assert got[0].rgb().shape == (H, W, 3)
        assert [f.index for f in got] == list(range(10))
        steps = [round(b.pts_s - a.pts_s, 6) for a, b in itertools.pairwise(got)]
        assert steps == [0.04] * 9
        assert value(reg, "restrav_webrtc_whep_connects_total", stream="pull1", outcome="ok") == 1
        assert value(reg, "restrav_webrtc_sessions", kind="whep") == 1
        assert len(server.sessions) == 1
    finally:
        await src.aclose()
        await server.stop()
    assert server.deletes == 1 and server.sessions == {}
    assert value(reg, "restrav_webrtc_sessions", kind="whep") == 0


async def test_whep_refused_token_is_a_clear_error() -> None:
    server = WhepServer(FRAMES, token="tok")
    await server.start()
    reg = CollectorRegistry()
    src = WhepSource(server.url, "pull1", token="wrong", metrics=WebRTCMetrics(reg))
    try:
        with pytest.raises(WebRTCError, match="401"):
            await src.connect()
        assert value(reg, "restrav_webrtc_whep_connects_total", stream="pull1",
                     outcome="http_error") == 1
    finally:
        await src.aclose()
        await server.stop()


async def test_whep_server_restart_ends_the_session_and_a_new_one_connects() -> None:
    server = WhepServer(FRAMES)
    await server.start()
    src = WhepSource(server.url, "pull1")
    try:
        await src.connect()
        await asyncio.wait_for(src.recv(), 10)
        await server.stop()  # every peer connection closed, as a crashed server would
        with pytest.raises(WebRTCError, match="ended"):
            for _ in range(200):
                await asyncio.wait_for(src.recv(), 10)
    finally:
        await src.aclose()
    await server.start()  # same port
    again = WhepSource(server.url, "pull1")
    try:
        await again.connect()
        f = await asyncio.wait_for(again.recv(), 10)
        assert f.rgb().shape == (H, W, 3)
    finally:
        await again.aclose()
        await server.stop()


async def test_unreachable_whep_server() -> None:
    src = WhepSource("http://127.0.0.1:9/whep/x", "pull1", http_timeout_s=2.0)
    try:
        with pytest.raises(WebRTCError):
            await src.connect()
    finally:
        await src.aclose()


@pytest.mark.parametrize(
    ("url", "endpoint", "token"),
    [
        ("whep+https://media.example/lobby/whep", "https://media.example/lobby/whep", None),
        ("whep+http://:s3cret@127.0.0.1:8889/cam/whep", "http://127.0.0.1:8889/cam/whep",
         "s3cret"),
        ("whep+https://user:p%40ss@h/x?q=1", "https://h/x?q=1", "p@ss"),
        ("whep+https://tokenonly@h/x", "https://h/x", "tokenonly"),
    ],
)
def test_whep_target_takes_the_token_out_of_the_url(
    url: str, endpoint: str, token: str | None
) -> None:
    assert whep_target(url) == (endpoint, token)


@pytest.mark.parametrize("url", ["rtsp://h/x", "whep+ftp://h/x", "whep+https:///nohost"])
def test_whep_target_refuses_other_urls_permanently(url: str) -> None:
    with pytest.raises(WebRTCError) as err:
        whep_target(url)
    assert err.value.permanent


class Recorder:
    """A plain HTTP server that records every request's method and Authorization header,
    answering 200 (or a redirect to ``redirect_to``)."""

    def __init__(self, redirect_to: str | None = None) -> None:
        self.seen: list[tuple[str, str | None]] = []
        self.redirect_to = redirect_to
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _any(self, request: web.Request) -> web.Response:
        self.seen.append((request.method, request.headers.get("Authorization")))
        if self.redirect_to is not None:
            return web.Response(status=307, headers={"Location": self.redirect_to})
        return web.Response(status=200)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._any)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def test_token_never_goes_to_a_cross_origin_location() -> None:
    other = Recorder()
    await other.start()
    server = WhepServer(FRAMES, token="tok", location_base=other.url)
    await server.start()
    src = WhepSource(server.url, "pull1", token="tok")
    try:
        await src.connect()
        await asyncio.wait_for(src.recv(), 10)
    finally:
        await src.aclose()
        await server.stop()
        await other.stop()
    # the DELETE went to the other origin, without the token
    assert other.seen == [("DELETE", None)]


async def test_token_never_follows_a_redirect() -> None:
    target = Recorder()
    await target.start()
    redirector = Recorder(redirect_to=f"{target.url}/whep/cam")
    await redirector.start()
    src = WhepSource(f"{redirector.url}/whep/cam", "pull1", token="tok")
    try:
        with pytest.raises(WebRTCError, match="redirect"):
            await src.connect()
    finally:
        await src.aclose()
        await redirector.stop()
        await target.stop()
    assert redirector.seen == [("POST", "Bearer tok")]  # the configured origin gets it
    assert target.seen == []


def test_same_origin() -> None:
    assert same_origin("http://a:80/x", "http://A/y")
    assert same_origin("https://a/x", "https://a:443/z")
    assert not same_origin("http://a:8080/x", "http://a:8081/x")
    assert not same_origin("http://a/x", "https://a/x")
    assert not same_origin("http://a/x", "http://b/x")
