"""Headless Chromium opens the operator page of a running `restrav serve` and sees it live.

`restrav serve` (the real composition, in this event loop) plays three looping
file streams through the tiny model and a mean-curvature classifier whose
centre lies between the curvature of a smooth clip and of a jerky one (both
measured here through the real scoring path). Chromium loads ``/#token=...``;
the test reads what a person would see through the DevTools protocol: three
rows, running, with timelines that advance; then stream ``c`` is switched to
the jerky clip through the control API (a forced alert), and its row turns to
an alert with a shaded period on its timeline. A click opens the stream's 21
features. Screenshots are saved (``RESTRAV_TEST_ARTIFACTS`` keeps them).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import ClientSession

from monitor.config import Settings, UiSettings, load_settings
from monitor.core.classifier import Classifier, Scaler
from monitor.core.pipeline import score_file
from monitor.live.alerts import AlertEvent
from monitor.live.livefeed import THETA_MEAN
from tests.media import write_clip
from tests.test_webrtc_browser import (
    CHROMIUM,
    DevTools,
    _decode_png,
    page_socket,
    stop_browser,
)
from tests.webrtc_peers import Service, free_port
from workers.common import build_embedder

TOKEN = "operator-page-token"

pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"Chromium is not installed ({CHROMIUM}); apt-get install -y chromium",
)

ROWS_JS = """(() => {
  const out = {};
  for (const r of document.querySelectorAll('.row')) {
    if (r.hidden) continue;
    const c = r.querySelector('canvas');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let line = 0, shade = 0, bar = 0, amber = 0;
    for (let i = 0; i < d.length; i += 4) {
      const R = d[i], G = d[i + 1], B = d[i + 2];
      if (B > 170 && G > 140 && R < 150) line++;                  // the P(AI) line
      if (R > G + 35 && R > B + 20 && R > 60) shade++;            // red: alert (and threshold)
      if (i < c.width * 4 * 2 && R > 180 && G < 130) bar++;       // the alert's top edge
      if (R > 200 && G > 140 && B < 120) amber++;                 // repeated-frame markers
    }
    out[r.dataset.id] = {
      line, shade, bar, amber, flagged: Number(r.dataset.flagged),
      state: r.dataset.state, alert: r.dataset.alert,
      lastT: Number(r.dataset.lastT), points: Number(r.dataset.points),
      text: r.innerText, top: r.getBoundingClientRect().top,
    };
  }
  return JSON.stringify(out);
})()"""


def curvature_classifier(settings: Settings, smooth: Path, jerky: Path, out: Path) -> Path:
    """A mean-curvature classifier centred between the two clips' measured curvature."""
    embedder = build_embedder(settings)
    lo, hi = (float(np.mean([w.window.features[THETA_MEAN]
                             for w in score_file(p, embedder, all_windows=True, hop=4).windows
                             or []]))
              for p in (smooth, jerky))
    assert hi - lo > 2.0, (lo, hi)  # the jerky clip curves more: something to separate
    Classifier(
        kind="mean_curvature", scaler=Scaler.identity(),
        params={"centre": np.array([(lo + hi) / 2]), "scale": np.array([(hi - lo) / 10])},
        threshold=0.5, threshold_mode="fixed",
    ).save(out)
    return out


async def until(dt: DevTools, expr: str, ok: Any, timeout_s: float, what: str) -> Any:
    """Evaluate ``expr`` (JSON) until ``ok(value)``; fail with the last value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    value: Any = None
    while loop.time() < deadline:
        raw = await dt.evaluate(expr)  # None while the page is still loading
        value = json.loads(raw) if raw is not None else None
        if value is not None and ok(value):
            return value
        await asyncio.sleep(0.25)
    pytest.fail(f"the page never showed {what}; last: {value}")


async def screenshot(dt: DevTools, path: Path) -> np.ndarray:
    shot = await dt.call("Page.captureScreenshot", format="png")
    path.write_bytes(base64.b64decode(shot["data"]))
    keep = os.environ.get("RESTRAV_TEST_ARTIFACTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)
    img = _decode_png(path)
    assert img.shape[0] == 820 and img.shape[1] == 1400 and img.std() > 10
    return img


@contextlib.asynccontextmanager
async def open_page(url: str, tmp_path: Path) -> AsyncIterator[DevTools]:
    """Headless Chromium on ``url`` (a 1400x820 viewport); its DevTools page client."""
    debug_port = free_port()
    args = [
        CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars",
        f"--remote-debugging-port={debug_port}", url,
    ]
    browser = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        origin = url.split("/", 3)[:3]
        async with ClientSession() as http, http.ws_connect(
            await page_socket(http, debug_port, url_part="/".join(origin)),
            max_msg_size=64 * 2**20,
        ) as ws:
            dt = DevTools(ws)
            await dt.call("Emulation.setDeviceMetricsOverride", width=1400, height=820,
                          deviceScaleFactor=1, mobile=False)
            yield dt
    finally:
        stop_browser(browser)


@pytest.mark.slow
async def test_operator_page_shows_three_live_streams_and_a_forced_alert(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    smooth, jerky, slow = tmp_path / "smooth.mp4", tmp_path / "jerky.mp4", tmp_path / "slow.mp4"
    for path, motion in ((smooth, "linear"), (jerky, "jitter")):
        write_clip(path, fps=25, n_frames=250, size=(64, 48), motion=motion)
    # 8 fps under the 11.5 Hz grid: every window has repeated frames (and low curvature)
    write_clip(slow, fps=8, n_frames=80, size=(64, 48), motion="linear")
    model = {"ref": str(tiny_model_dir), "device": "cpu", "image_size": 112, "batch_size": 8}
    clf = curvature_classifier(load_settings(None, model=model), smooth, jerky, tmp_path / "clf")
    settings = load_settings(None, **{
        "model": model,
        "classifier": {"path": str(clf)},
        "serve": {
            "api": {"port": free_port(), "token": TOKEN, "allow_file_sources": True},
            "streams": [{"id": sid, "url": f"file://{clip}", "loop": True}
                        for sid, clip in (("a", smooth), ("b", slow), ("c", smooth))],
            "persist_streams": False,
            "sinks": {"stdout": False},
            "engine": {"hop": 4, "max_batch": 8, "max_wait_ms": 5.0},
            "alerts": {"enter": 0.8, "leave": 0.6, "min_duration_s": 0.5},
            "ui": {"tick_s": 0.5, "history_s": 30},
        },
    })
    async with (
        Service(settings) as svc,
        open_page(f"{svc.url}/#token={TOKEN}", tmp_path) as dt,
        ClientSession() as http,
    ):
        rows = await until(
            dt, ROWS_JS,
            lambda r: set(r) == {"a", "b", "c"}
            and all(x["state"] == "running" and x["points"] >= 2 and x["line"] > 20
                    for x in r.values()),
            120, "three running rows with timelines")
        # the token left the address bar (it was only ever in the fragment)
        assert "token" not in await dt.evaluate("location.href")
        assert await dt.evaluate("sessionStorage.getItem('restrav.token')") == TOKEN
        assert [k for k, _ in sorted(rows.items(), key=lambda kv: kv[1]["top"])] == [
            "a", "b", "c"]
        assert all(x["alert"] == "0" and x["bar"] == 0 for x in rows.values())
        # repeated frames are marked on b's timeline only
        assert rows["b"]["flagged"] > 0 and rows["b"]["amber"] > 10
        assert rows["a"]["flagged"] == rows["c"]["flagged"] == rows["a"]["amber"] == 0
        assert all("%" in x["text"] for x in rows.values())  # the latest P(AI)
        before = {k: v["lastT"] for k, v in rows.items()}
        await until(dt, ROWS_JS,
                    lambda r: all(r[k]["lastT"] > before[k] for k in before),
                    60, "timelines that advance")
        ui = json.loads(await dt.evaluate(
            "JSON.stringify({conn: restravUi.conn, updates: restravUi.updates})"))
        assert ui["conn"] == "live" and ui["updates"] > 0

        # force an alert: stream c now plays the jerky clip
        async with http.put(f"{svc.url}/streams/c",
                            json={"url": f"file://{jerky}", "loop": True},
                            headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 200, await r.text()
        rows = await until(dt, ROWS_JS,
                           lambda r: r["c"]["alert"] == "1" and r["c"]["bar"] >= 40,
                           120, "an alert period on stream c")
        assert "ALERT" in rows["c"]["text"]
        # the period is shaded over the row's height (a and b show only the threshold)
        assert rows["c"]["shade"] > max(rows["a"]["shade"], rows["b"]["shade"]) + 15 * 40
        assert rows["a"]["bar"] == rows["b"]["bar"] == 0
        assert rows["a"]["alert"] == rows["b"]["alert"] == "0"
        summary = await dt.evaluate("document.getElementById('summary').innerText")
        assert "1 alert" in summary and "3 streams" in summary
        await asyncio.sleep(2.0)  # a little more timeline for the picture
        await screenshot(dt, tmp_path / "operator-page.png")

        # one stream: a click opens its 21 features and its history
        await dt.evaluate("document.querySelector('.row[data-id=\"c\"]').click(), 1")
        detail = await until(
            dt, "JSON.stringify({hidden: document.getElementById('detail').hidden,"
                " features: document.querySelectorAll('#dFeatures tr').length,"
                " title: document.getElementById('dId').textContent,"
                " history: document.querySelectorAll('#dHistory li').length})",
            lambda d: not d["hidden"] and d["features"] == 21, 30, "the detail panel")
        assert detail["title"] == "c" and detail["history"] >= 2
        await screenshot(dt, tmp_path / "operator-page-detail.png")

        # control actions go through the control API, with the token
        await dt.evaluate("document.getElementById('dPause').click(), 1")
        await until(dt, ROWS_JS, lambda r: r["c"]["state"] == "paused", 30, "c paused")
        assert (await svc.get_json("/streams/c", TOKEN))[1]["state"] == "paused"
        # the detail panel enables Resume when it has refreshed (the row may show
        # "paused" first, from the live feed): a click on a disabled button does nothing
        await until(dt, "JSON.stringify(!document.getElementById('dResume').disabled)",
                    lambda enabled: enabled is True, 30, "Resume enabled")
        await dt.evaluate("document.getElementById('dResume').click(), 1")
        await until(dt, ROWS_JS, lambda r: r["c"]["state"] in ("starting", "running"),
                    30, "c resumed")
        # and the token never appeared in a URL the page requested
        urls = json.loads(await dt.evaluate(
            "JSON.stringify(performance.getEntriesByType('resource').map(e => e.name))"))
        assert any("/ui/streams/c" in u for u in urls)
        assert any("/streams/c/pause" in u for u in urls)
        assert not any(TOKEN in u for u in urls), urls
        assert json.loads(await dt.evaluate("JSON.stringify(restravUi.errors)")) == []
    assert svc.rc == 0


@pytest.mark.slow
async def test_operator_page_with_200_streams_then_one(tmp_path: Path) -> None:
    """The list is virtualised (200 streams, a handful of rows in the page), filters, and
    follows streams away down to one; a wrong token gets the sign-in form."""
    from tests.test_livefeed import TOKEN as FEED_TOKEN
    from tests.test_livefeed import FeedServer, score, status

    ids = [f"cam{i:03d}" for i in range(200)]
    srv = FeedServer(UiSettings(tick_s=0.5, history_s=60))
    t0 = time.time()
    srv.feed.statuses = lambda: [
        status(i, state="stalled" if i == "cam007" else "running", alert=i == "cam150",
               history=[("running", t0 - 20), ("stalled", t0 + 2)] if i == "cam007" else None,
               gaps={"stall": 1} if i == "cam007" else None)
        for i in ids]
    srv.feed.publish_event(AlertEvent("cam150", "alert_start", 0.9, t0, t0 - 1))

    async def scores() -> None:
        k = 0
        while True:
            now = time.time()
            for n, i in enumerate(ids):
                p = None if i == "cam000" else 0.05 + 0.4 * abs(math.sin(k / 7 + n))
                srv.feed.publish(score(i, k, now, p, curvature=100 + 10 * math.sin(k / 5)))
            k += 1
            await asyncio.sleep(0.25)

    feeder = asyncio.create_task(scores())
    try:
        async with srv:
            await srv.feed.start()
            async with open_page(f"{srv.url}/ui#token=wrong", tmp_path) as dt:
                login = await until(
                    dt, "JSON.stringify({shown: !document.getElementById('login').hidden,"
                        " error: document.getElementById('loginError').textContent})",
                    lambda v: v["shown"] and "401" in v["error"], 60, "the sign-in form")
                assert "refused" in login["error"]
                await dt.evaluate(
                    f"document.getElementById('token').value = {json.dumps(FEED_TOKEN)};"
                    " document.getElementById('loginForm').requestSubmit(), 1")
                page = ("JSON.stringify({streams: restravUi.streams.size,"
                        " rows: document.querySelectorAll('.row:not([hidden])').length,"
                        " dom: document.querySelectorAll('.row').length,"
                        " summary: document.getElementById('summary').innerText,"
                        " ids: [...document.querySelectorAll('.row:not([hidden])')]"
                        ".map(r => r.dataset.id),"
                        " units: [...document.querySelectorAll('.row:not([hidden]) .unit')]"
                        ".map(u => u.textContent),"
                        " marks: [...document.querySelectorAll('.row:not([hidden])')]"
                        ".map(r => [r.dataset.bands, r.dataset.gaps].map(Number)),"
                        " errors: restravUi.errors})")
                v = await until(dt, page, lambda v: v["streams"] == 200 and v["rows"] > 5, 60,
                                "200 streams")
                assert "200 streams" in v["summary"] and "1 alert" in v["summary"]
                assert v["dom"] < 30  # virtualised: only what fits is in the page
                assert v["ids"][0] == "cam000" and v["units"][0] == "curvature"
                await dt.evaluate("document.getElementById('list').scrollTop = 1e6, 1")
                v = await until(dt, page, lambda v: "cam199" in v["ids"], 30, "the last rows")
                assert "cam000" not in v["ids"] and v["dom"] < 30
                assert v["errors"] == []  # no script error, no CSP violation
                await dt.evaluate("(() => { const f = document.getElementById('filter');"
                                  " f.value = 'cam19'; f.dispatchEvent(new Event('input'));"
                                  " return 1; })()")
                v = await until(dt, page, lambda v: len(v["ids"]) == 10, 30, "the filter")
                assert all(i.startswith("cam19") for i in v["ids"])
                await dt.evaluate("(() => { const f = document.getElementById('filter');"
                                  " f.value = ''; f.dispatchEvent(new Event('input'));"
                                  " document.getElementById('alertsFirst').click(); return 1; })()")
                v = await until(dt, page, lambda v: v["ids"][:2] == ["cam150", "cam007"], 30,
                                "alerts first, then the stalled stream")
                # the stall is a band and a gap on cam007's timeline, and on no other
                assert v["marks"][1][0] >= 1 and v["marks"][1][1] >= 1
                assert all(m == [0, 0] for m in v["marks"][2:])
                await asyncio.sleep(3.0)  # some timeline for the picture
                await screenshot(dt, tmp_path / "operator-page-200.png")
                del ids[1:]  # 199 streams removed
                v = await until(dt, page, lambda v: v["streams"] == 1 and v["rows"] == 1, 30,
                                "one stream")
                assert v["ids"] == ["cam000"] and "1 stream" in v["summary"]
    finally:
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder


async def test_operator_page_draws_a_long_outage_and_spares_a_waiting_whip_stream(
    tmp_path: Path
) -> None:
    """A camera reconnecting for 5 minutes (longer than the 30 s history) is banded up to
    now; a WHIP stream waiting for its publisher is neither banded nor counted as
    stalled; the row's error, cut short in the row, is whole in its tooltip."""
    from tests.test_livefeed import TOKEN as FEED_TOKEN
    from tests.test_livefeed import FeedServer, status

    t0 = time.time()
    refused = ("rtsp://cam.local/live: cannot reach the server (Connection refused); "
               "is it running, and are the host and port right?")
    outage = {**status("outage", state="reconnecting",
                       history=[("running", t0 - 400), ("reconnecting", t0 - 300)]),
              "kind": "rtsp", "state_since": t0 - 300, "reconnects": 28,
              "error": {"code": "unreachable", "message": refused}}
    waiting = {**status("whipcam", state="reconnecting",
                        history=[("running", t0 - 20), ("reconnecting", t0 - 10)]),
               "kind": "whip", "state_since": t0 - 10}
    srv = FeedServer(UiSettings(tick_s=0.5, history_s=30))
    srv.feed.statuses = lambda: [outage, waiting, status("ok")]
    async with srv:
        await srv.feed.start()
        async with open_page(f"{srv.url}/ui#token={FEED_TOKEN}", tmp_path) as dt:
            page = ("JSON.stringify({summary: document.getElementById('summary').innerText,"
                    " rows: Object.fromEntries([...document.querySelectorAll("
                    "'.row:not([hidden])')].map(r => [r.dataset.id,"
                    " {bands: Number(r.dataset.bands), title: r.title}])),"
                    " errors: restravUi.errors})")
            v = await until(dt, page, lambda v: len(v["rows"]) == 3, 60, "three rows")
    assert v["rows"]["outage"]["bands"] >= 1, v  # the outage is drawn though it began 5 min ago
    assert v["rows"]["whipcam"]["bands"] == 0, v
    assert "1 stalled / failing" in v["summary"], v
    assert v["rows"]["outage"]["title"] == f"unreachable: {refused}", v
    assert v["rows"]["ok"]["title"] == "" and v["errors"] == [], v


async def test_operator_page_of_a_service_without_a_token_says_what_to_set(
    tmp_path: Path
) -> None:
    """No API token configured: the page asks for none (there is none to give); it says
    which setting turns it on."""
    from tests.test_livefeed import FeedServer

    srv = FeedServer(UiSettings(tick_s=0.5, history_s=30), token=None)
    async with srv:
        await srv.feed.start()
        async with open_page(f"{srv.url}/ui", tmp_path) as dt:
            v = await until(
                dt, "JSON.stringify({shown: !document.getElementById('login').hidden,"
                    " error: document.getElementById('loginError').textContent,"
                    " input: getComputedStyle(document.getElementById('token')).display,"
                    " errors: restravUi.errors})",
                lambda v: v["shown"] and v["error"], 60, "the page's message")
    assert "no API token" in v["error"] and "serve.api.token_file" in v["error"], v
    assert "RESTRAV_SERVE__API__TOKEN" in v["error"], v
    assert v["input"] == "none" and v["errors"] == [], v  # nothing to type
