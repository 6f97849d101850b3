"""The operator page's feed and its Server-Sent Events stream (monitor.live.livefeed).

The feed runs in a real aiohttp server on loopback; clients are aiohttp's own
client and raw sockets (a client that connects and never reads). Scores are
built here (the engine is not the subject); the clock of the feed is faked.
The drain test runs the real `restrav serve` composition.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from aiohttp import ClientSession, ClientTimeout, web
from prometheus_client import CollectorRegistry

from monitor.config import UiSettings, load_settings
from monitor.live.alerts import AlertEvent
from monitor.live.api import check_bearer
from monitor.live.livefeed import THETA_MEAN, LiveFeed
from monitor.live.page import add_ui_routes
from monitor.metrics import LiveFeedMetrics
from monitor.types import N_FEATURES, Score, StreamScore, WindowFeatures
from tests.webrtc_peers import Service, free_port, serve_app

TOKEN = "ui-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Clock:
    """A settable clock for the feed."""

    def __init__(self, t: float = 1_800_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def score(stream: str, seq: int, at: float, p: float | None, curvature: float = 110.0,
          repeated: int = 0, segment: int = 0) -> StreamScore:
    """A scored window whose mean-curvature feature is ``curvature``."""
    f = np.linspace(0.1, 2.1, N_FEATURES)
    f[THETA_MEAN] = curvature
    wf = WindowFeatures(features=f, repeated_frames=repeated)
    return StreamScore(stream_id=stream, seq=seq, segment=segment, start_s=seq * 0.1,
                       end_s=seq * 0.1 + 2.0, score=Score(wf, p, 0.5, "test", repeated),
                       arrival_s=0.0, scored_at=at, wall_start=at - 2.0, wall_end=at)


def status(sid: str, state: str = "running", history: list[tuple[str, float]] | None = None,
           gaps: dict[str, int] | None = None, alert: bool = False) -> dict[str, Any]:
    """A StreamStatus.to_json()-shaped dict."""
    return {"id": sid, "kind": "file", "url": f"file:///{sid}.mp4", "state": state,
            "paused": state == "paused", "error": None, "reconnects": 0, "windows_scored": 1,
            "alert_active": alert, "gaps": gaps or {},
            "history": [{"state": s, "at": t} for s, t in (history or [])]}


def test_ticks_fold_scores_into_points_alerts_and_marks() -> None:
    clock = Clock()
    t0 = clock.t
    statuses = [status("cam1", history=[("starting", t0 - 5), ("running", t0 - 4)])]
    feed = LiveFeed(UiSettings(tick_s=1.0, history_s=10), statuses=lambda: statuses, clock=clock)
    feed.publish(score("cam1", 1, t0 - 0.5, 0.2, curvature=100.0))
    feed.publish(score("cam1", 2, t0 - 0.2, 0.7, curvature=120.0, repeated=2))
    up = feed.tick()
    # one point per tick: the highest P(AI), the mean curvature, flagged if any window was
    assert up["points"]["cam1"] == [round(t0 - 0.2, 2), 0.7, 110.0, 1, 0]
    assert up["status"]["cam1"]["state"] == "running"
    assert [m[2] for m in up["marks"]["cam1"]] == ["starting", "running"]
    clock.t += 1
    statuses[0] = status("cam1", state="reconnecting",
                         history=[("starting", t0 - 5), ("running", t0 - 4),
                                  ("reconnecting", t0 + 0.5)], gaps={"reconnect": 1})
    feed.publish_event(AlertEvent("cam1", "alert_start", 0.9, t0 + 0.4, t0 - 0.2))
    up = feed.tick()
    assert up["points"] == {}  # no window this tick: no point
    assert up["status"]["cam1"]["state"] == "reconnecting"
    assert [m[1:] for m in up["marks"]["cam1"]] == [["state", "reconnecting"], ["gap", "reconnect"]]
    assert up["alerts"] == {"cam1": [[round(t0 - 0.2, 2), None]]}
    clock.t += 1
    feed.publish_event(AlertEvent("cam1", "alert_end", 0.3, clock.t, t0 - 0.2))
    up = feed.tick()
    assert up["alerts"]["cam1"] == [[round(t0 - 0.2, 2), round(clock.t, 2)]]
    assert "cam1" not in up["status"]  # nothing changed: not repeated
    snap = feed.snapshot()
    # pages connecting within one tick share one serialised snapshot
    assert feed.snapshot_message() is feed.snapshot_message()
    cam = snap["streams"]["cam1"]
    assert len(cam["points"]) == 1 and len(cam["alerts"]) == 1 and len(cam["marks"]) == 4
    detail = feed.detail("cam1")
    assert detail is not None and len(detail["latest"]["features"]) == N_FEATURES
    assert detail["latest"]["features"]["theta_mean"] == 120.0
    # old points leave the snapshot after history_s; a removed stream leaves the feed
    clock.t += 30
    assert feed.snapshot()["streams"]["cam1"]["points"] == []
    statuses.clear()
    feed.publish(score("cam1", 3, clock.t, 0.1))  # scored just before its removal
    up = feed.tick()
    assert up["removed"] == ["cam1"] and up["points"] == {}
    assert feed.detail("cam1") is None


def test_a_tick_folds_to_its_highest_p_and_any_flag_not_its_last_window() -> None:
    """The flagged, highest-scoring window arrives first and a lower, unflagged one last
    (and with an earlier end): the point still carries the highest P(AI), the flag of
    any window, the latest end and the mean curvature. The next tick starts afresh."""
    clock = Clock()
    t0 = clock.t
    statuses = [status("cam1")]
    feed = LiveFeed(UiSettings(tick_s=1.0, history_s=10), statuses=lambda: statuses, clock=clock)
    feed.publish(score("cam1", 1, t0 - 0.2, 0.7, curvature=100.0, repeated=2))
    feed.publish(score("cam1", 2, t0 - 0.5, 0.2, curvature=130.0))
    feed.publish(score("cam1", 3, t0 - 0.6, None, curvature=100.0))
    up = feed.tick()
    assert up["points"]["cam1"] == [round(t0 - 0.2, 2), 0.7, 110.0, 1, 0]
    clock.t += 1
    feed.publish(score("cam1", 4, clock.t - 0.1, 0.1, curvature=90.0))
    up = feed.tick()
    assert up["points"]["cam1"] == [round(clock.t - 0.1, 2), 0.1, 90.0, 0, 0]


def test_an_alert_ending_and_the_next_starting_in_one_tick_both_reach_the_page() -> None:
    """With tick_s above the alert's min_duration_s both events fall in one tick: the
    update carries both periods (the first closed), not only the newest."""
    clock = Clock()
    t0 = clock.t
    statuses = [status("cam1")]
    feed = LiveFeed(UiSettings(tick_s=5.0, history_s=60), statuses=lambda: statuses, clock=clock)
    feed.publish_event(AlertEvent("cam1", "alert_start", 0.9, t0, t0 - 1))
    feed.tick()
    clock.t += 5
    feed.publish_event(AlertEvent("cam1", "alert_end", 0.3, t0 + 1, t0 - 1))
    feed.publish_event(AlertEvent("cam1", "alert_start", 0.9, t0 + 4, t0 + 3))
    up = feed.tick()
    assert up["alerts"] == {"cam1": [[round(t0 - 1, 2), round(t0 + 1, 2)],
                                     [round(t0 + 3, 2), None]]}
    clock.t += 5
    assert feed.tick()["alerts"] == {}  # nothing changed: nothing resent


def test_no_classifier_points_carry_curvature_only() -> None:
    clock = Clock()
    feed = LiveFeed(UiSettings(), clock=clock)
    feed.publish(score("c", 1, clock.t, None, curvature=97.5))
    assert feed.tick()["points"]["c"][1:3] == [None, 97.5]


class FeedServer:
    """The feed's routes on a real aiohttp server, with the API's bearer check."""

    def __init__(self, settings: UiSettings, token: str | None = TOKEN) -> None:
        self.registry = CollectorRegistry()
        self.feed = LiveFeed(settings, metrics=LiveFeedMetrics(self.registry))
        app = web.Application()
        add_ui_routes(app, self.feed, lambda r: check_bearer(r, token))
        self.app = app
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> FeedServer:
        self.runner, self.url = await serve_app(self.app)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


async def events(resp: Any) -> AsyncIterator[tuple[str, Any]]:
    """Parse a text/event-stream body into (event, data)."""
    buf = b""
    async for chunk in resp.content.iter_any():
        buf += chunk
        while b"\n\n" in buf:
            block, buf = buf.split(b"\n\n", 1)
            ev, data = "message", ""
            for line in block.decode().split("\n"):
                if line.startswith("event:"):
                    ev = line[6:].strip()
                elif line.startswith("data:"):
                    data += line[5:].strip()
            yield ev, json.loads(data)


async def wait_for(cond: Any, timeout_s: float = 30.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def connect_stuck(url: str) -> socket.socket:
    """A client that asks for the event stream and never reads (a 4 kB receive buffer)."""
    host, port = url.removeprefix("http://").split(":")
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect((host, int(port)))
    stuck.sendall(f"GET /ui/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}"
                  "\r\n\r\n".encode())
    return stuck


async def flood(feed: LiveFeed, done: Any) -> None:
    """Updates of ~50 kB (500 streams) until ``done()``: socket buffers fill up."""
    ids = [f"stream-{j:03d}-" + "x" * 50 for j in range(500)]
    for i in range(1000):
        for sid in ids:
            feed.publish(score(sid, i, 1.0 + i, 0.5))
        feed.tick()
        await asyncio.sleep(0.01)
        if done():
            return


async def test_page_and_assets_are_served_without_a_token_events_need_one() -> None:
    async with FeedServer(UiSettings()) as srv, ClientSession() as http:
        for path, ctype in (("/", "text/html"), ("/ui", "text/html"),
                            ("/ui/app.js", "text/javascript"), ("/ui/app.css", "text/css")):
            async with http.get(srv.url + path) as r:
                assert r.status == 200 and r.content_type == ctype, path
                assert "script-src 'self'" in r.headers["Content-Security-Policy"]
                body = await r.text()
                assert "http://" not in body and "https://" not in body  # no CDN: offline
        async with http.get(srv.url + "/ui/events") as r:
            assert r.status == 401
        async with http.get(srv.url + "/ui/events", headers={"Authorization": "Bearer no"}) as r:
            assert r.status == 401
        async with http.get(srv.url + "/ui/streams/x", headers=AUTH) as r:
            assert r.status == 404
        srv.feed.publish(score("x", 1, 1.0, 0.4))
        async with http.get(srv.url + "/ui/streams/x", headers=AUTH) as r:
            assert r.status == 200 and (await r.json())["latest"]["p_ai"] == 0.4
        async with http.get(srv.url + "/ui/events", headers=AUTH) as r:
            assert r.status == 200 and r.content_type == "text/event-stream"
            it = events(r)
            ev, snap = await anext(it)
            assert ev == "snapshot" and "x" in snap["streams"] and len(snap["feature_names"]) == 21
            srv.feed.tick()
            ev, up = await anext(it)
            assert ev == "update" and up["points"]["x"][1] == 0.4


async def test_without_an_api_token_the_event_stream_is_off() -> None:
    async with FeedServer(UiSettings(), token=None) as srv, ClientSession() as http:
        async with http.get(srv.url + "/ui/events", headers=AUTH) as r:
            assert r.status == 503
            assert (await r.json())["error"]["code"] == "control_disabled"
        async with http.get(srv.url + "/") as r:
            assert r.status == 200  # the page itself says why it cannot show anything


async def test_a_client_that_never_reads_is_dropped_and_counted() -> None:
    settings = UiSettings(client_buffer_messages=8)
    async with FeedServer(settings) as srv, ClientSession() as http:
        # a reader that keeps up, next to the one that never reads
        got: list[str] = []

        async def reader() -> None:
            async with http.get(srv.url + "/ui/events", headers=AUTH) as r:
                async for ev, _ in events(r):
                    got.append(ev)

        good = asyncio.create_task(reader())
        await wait_for(lambda: srv.feed.clients == 1, what="the reader")
        stuck = connect_stuck(srv.url)
        await wait_for(lambda: srv.feed.clients == 2, what="the stuck client")
        await flood(srv.feed, lambda: srv.feed.dropped > 0)
        await wait_for(lambda: srv.feed.dropped == 1, what="the drop")
        assert srv.metric("restrav_ui_clients_dropped_total", reason="slow") == 1
        assert srv.feed.clients == 1  # the reader is still there
        updates = len(got)
        srv.feed.tick()
        await wait_for(lambda: len(got) > updates, what="the reader's next update")
        stuck.settimeout(10)
        with contextlib.suppress(ConnectionError):  # aborted: reset, or EOF after the buffer
            while stuck.recv(65536):
                pass
        stuck.close()
        good.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await good
        # a client that left is noticed at the next write (the ticker writes every tick_s)
        await wait_for(lambda: srv.feed.tick() and srv.feed.clients == 0, what="the reader gone")
        assert srv.metric("restrav_ui_clients") == 0


async def test_drain_aborts_a_client_stuck_in_a_write() -> None:
    # a deep buffer: the client is not dropped as slow, its handler blocks in a write
    async with FeedServer(UiSettings(client_buffer_messages=10_000)) as srv:
        stuck = connect_stuck(srv.url)
        await wait_for(lambda: srv.feed.clients == 1, what="the stuck client")
        sub = next(iter(srv.feed.fanout._subs))
        # until messages pile up behind a write that cannot finish
        await flood(srv.feed, lambda: sub.queued > 20)
        assert sub.queued > 20
        await srv.feed.drain()
        assert srv.feed.clients == 0
        assert srv.metric("restrav_ui_clients_dropped_total", reason="write_timeout") == 1
        stuck.close()


async def test_fifty_clients_at_once_each_get_every_update_and_the_51st_is_refused() -> None:
    async with FeedServer(UiSettings(max_clients=50)) as srv, ClientSession(
        timeout=ClientTimeout(total=120)
    ) as http:
        seen: dict[int, list[int]] = {i: [] for i in range(50)}

        async def client(i: int) -> None:
            async with http.get(srv.url + "/ui/events", headers=AUTH) as r:
                assert r.status == 200
                async for ev, data in events(r):
                    if ev == "update":
                        seen[i].append(int(data["points"]["cam"][0]))
                        if len(seen[i]) == 5:
                            return

        tasks = [asyncio.create_task(client(i)) for i in range(50)]
        await wait_for(lambda: srv.feed.clients == 50, 60, "50 clients")
        assert srv.metric("restrav_ui_clients") == 50
        async with http.get(srv.url + "/ui/events", headers=AUTH) as r:
            assert r.status == 503 and (await r.json())["error"]["code"] == "too_many"
        assert srv.metric("restrav_ui_clients_refused_total", reason="too_many") == 1
        for k in range(5):
            srv.feed.publish(score("cam", k, 100.0 + k, 0.1))
            srv.feed.tick()
            await asyncio.sleep(0.05)
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
        assert all(v == [100, 101, 102, 103, 104] for v in seen.values())
        await wait_for(lambda: srv.feed.tick() and srv.feed.clients == 0, what="clients to leave")
        assert srv.feed.dropped == 0


async def test_serve_drain_tells_every_client_and_closes(
    tiny_model_dir: Any, tmp_path: Any
) -> None:
    settings = load_settings(None, **{
        "model": {"ref": str(tiny_model_dir), "device": "cpu", "image_size": 112},
        "serve": {"api": {"port": free_port(), "token": TOKEN}, "persist_streams": False,
                  "sinks": {"stdout": False}, "ui": {"tick_s": 0.2}},
    })
    svc = Service(settings)
    await svc.__aenter__()
    try:
        async with ClientSession() as http:
            got: dict[int, list[tuple[str, Any]]] = {i: [] for i in range(3)}

            async def client(i: int) -> None:
                async with http.get(svc.url + "/ui/events", headers=AUTH) as r:
                    async for ev, data in events(r):
                        got[i].append((ev, data))
                    # the body ended: the server closed the stream after its goodbye

            tasks = [asyncio.create_task(client(i)) for i in range(3)]
            await wait_for(lambda: all(len(v) >= 2 for v in got.values()), 60, "updates")
            svc.stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
            for v in got.values():
                assert v[0][0] == "snapshot" and v[-1] == ("bye", {"reason": "draining"})
    finally:
        svc.stop.set()
        assert svc.task is not None
        svc.rc = await asyncio.wait_for(svc.task, 60)
    assert svc.rc == 0


@pytest.mark.parametrize("n", [1, 200])
async def test_snapshot_scales_from_one_to_two_hundred_streams(n: int) -> None:
    clock = Clock()
    feed = LiveFeed(UiSettings(tick_s=1.0, history_s=300), clock=clock)
    for k in range(300):  # five minutes of ticks
        for i in range(n):
            feed.publish(score(f"cam{i:03d}", k, clock.t, (i % 10) / 10))
        feed.tick()
        clock.t += 1
    snap = json.dumps(feed.snapshot())
    per_stream = len(snap) / n
    assert len(json.loads(snap)["streams"]) == n
    assert per_stream < 12_000  # ~40 bytes a point, 300 points: a 200-stream snapshot < 2.4 MB
