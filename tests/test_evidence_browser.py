"""The operator page shows what was flagged: Chromium (headless, DevTools protocol)
against a real `restrav serve` whose classifier alerts on a file stream.

The stream's detail shows its latest frame (refreshed), the alert's evidence one click
away (contact sheet, the MP4 playing, the 21 features); images and clips come from
``blob:`` URLs fetched with the token in a header, so no URL the page requested holds
the token; the page's CSP (``img-src``/``media-src`` allow ``blob:`` only) is never
violated; a page holding a wrong token gets no image."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp import ClientSession

from monitor.config import EvidenceSettings
from tests.media import write_clip
from tests.test_evidence_serve import TOKEN, coded_frame, settings_for
from tests.test_ui_browser import open_page, screenshot, until
from tests.test_webrtc_browser import CHROMIUM
from tests.webrtc_peers import Service

pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"Chromium is not installed ({CHROMIUM}); apt-get install -y chromium",
)

DETAIL_JS = """JSON.stringify({
  thumb: (() => { const i = document.getElementById('dThumb');
                  return i.hidden ? 0 : i.naturalWidth; })(),
  thumbSrc: document.getElementById('dThumb').src,
  evidence: [...document.querySelectorAll('#dEvidence button')].map(b => b.dataset.evidence),
})"""

VIEW_JS = """JSON.stringify({
  hidden: document.getElementById('evView').hidden,
  title: document.getElementById('evTitle').textContent,
  sheet: document.getElementById('evSheet').naturalWidth,
  sheetSrc: document.getElementById('evSheet').src,
  clipSrc: document.getElementById('evClip').src,
  ready: document.getElementById('evClip').readyState,
  duration: document.getElementById('evClip').duration,
  time: document.getElementById('evClip').currentTime,
  error: document.getElementById('evClip').error && document.getElementById('evClip').error.code,
  features: document.querySelectorAll('#evFeatures tr').length,
})"""
PICK_KIND_JS = ("(s => { %s; s.dispatchEvent(new Event('change')); return 1; })"
                "(document.getElementById('eKind'))")
"""Set the event log's kind filter as a user would (``%s``: a statement on ``s``)."""


def page_settings(tmp: Path, model_dir: Path, redis_url: str) -> Any:
    """Serve with the page on (two updates a second) and one looping file stream that
    alerts (see tests/test_evidence_serve.py)."""
    clip = tmp / "jerky.mp4"
    write_clip(clip, fps=25, n_frames=250, size=(128, 96), frame_fn=coded_frame)
    settings = settings_for(tmp, model_dir, redis_url, clip)
    return settings.model_copy(update={"serve": settings.serve.model_copy(update={
        "ui": settings.serve.ui.model_copy(update={"enabled": True, "tick_s": 0.5}),
        "streams": (settings.serve.streams[0].model_copy(update={"loop": True}),),
    })})


@pytest.mark.slow
async def test_the_page_shows_thumbnails_and_the_evidence_of_an_alert(
    tiny_model_dir: Path, redis_url: str, tmp_path: Path
) -> None:
    settings = page_settings(tmp_path, tiny_model_dir, redis_url)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    async with Service(settings) as svc, open_page(f"{svc.url}/#token={TOKEN}", tmp_path) as dt:
        # every request the page makes is listed (the default buffer keeps 250)
        await dt.evaluate("performance.setResourceTimingBufferSize(100000), 1")
        await until(dt, "JSON.stringify(document.querySelectorAll('.row').length)",
                    lambda n: n == 1, 60, "the stream's row")
        await dt.evaluate("document.querySelector('.row[data-id=\"cam\"]').click(), 1")
        first = await until(dt, DETAIL_JS, lambda d: d["thumb"] == 64, 60, "a thumbnail")
        assert first["thumbSrc"].startswith("blob:")
        await until(dt, DETAIL_JS, lambda d: d["thumbSrc"] != first["thumbSrc"], 30,
                    "the thumbnail refreshed")
        row_thumb = ("JSON.stringify((i => [i.hidden ? 0 : i.naturalWidth, i.src])"
                     "(document.querySelector('.row[data-id=\"cam\"] .rowthumb')))")
        _, src = await until(dt, row_thumb, lambda v: v[0] == 64, 60, "the row's thumbnail")
        assert src.startswith("blob:")
        await until(dt, row_thumb, lambda v: v[1] != src and v[0] == 64, 30,
                    "the row's thumbnail refreshed")
        d = await until(dt, DETAIL_JS, lambda d: len(d["evidence"]) >= 1, 120,
                        "the alert in the evidence list")
        # the hover readout: time and P(AI) of the point under the pointer, near "now"
        box = json.loads(await dt.evaluate(
            "JSON.stringify(document.getElementById('dCanvas').getBoundingClientRect())"))
        await dt.call("Input.dispatchMouseEvent", type="mouseMoved",
                      x=box["right"] - 12, y=box["top"] + box["height"] / 2)
        readout = await until(
            dt, "JSON.stringify(document.getElementById('hover').hidden ? '' : "
                "document.getElementById('hover').textContent)",
            lambda t: "P(AI) 100.0%" in t, 30, "the hover readout")
        assert re.fullmatch(r"\d\d:\d\d:\d\d · P\(AI\) 100\.0%", readout), readout
        eid = d["evidence"][0]
        starts = [ev for _, ev in r.xrange("restrav:events") if ev["kind"] == "alert_start"]
        assert eid in {ev["evidence"] for ev in starts}
        folder = tmp_path / "evidence" / eid
        for _ in range(100):
            if (folder / "record.json").is_file():
                break
            await asyncio.sleep(0.2)
        await dt.evaluate(
            f"document.querySelector('#dEvidence button[data-evidence=\"{eid}\"]').click(), 1")
        view = await until(dt, VIEW_JS,
                           lambda v: v["sheet"] > 0 and v["ready"] >= 2 and v["features"] == 21,
                           60, "the contact sheet, the clip and the features")
        assert view["sheetSrc"].startswith("blob:") and view["clipSrc"].startswith("blob:")
        assert view["sheet"] == 6 * 64 and 1.8 < view["duration"] < 2.5, view
        assert "alert_start" in view["title"] and "cam" in view["title"]
        await dt.evaluate("document.getElementById('evClip').play(), 1")
        await until(dt, VIEW_JS, lambda v: v["time"] > 0.3 and v["error"] is None, 30,
                    "the clip playing")
        await dt.evaluate("document.getElementById('evView').scrollIntoView(), 1")
        await screenshot(dt, tmp_path / "operator-page-evidence.png")
        await dt.call("Input.dispatchMouseEvent", type="mouseMoved", x=5, y=5)  # readout off
        # the event log: the alert with its evidence, acknowledged from the page
        await dt.evaluate("document.getElementById('eventsBtn').click(), 1")
        row = f"#eList li[data-kind=alert_start][data-evidence='{eid}']"
        await until(dt, f"JSON.stringify(!!document.querySelector(\"{row} .ev-ack\"))",
                    lambda v: v is True, 30, "the alert in the event log")
        await dt.evaluate(f"document.querySelector(\"{row} .ev-ack\").click(), 1")
        await until(dt, f"JSON.stringify(document.querySelector(\"{row}\").innerText)",
                    lambda t: "acknowledged by operator" in t, 30, "the acknowledgement")
        rows_js = ("JSON.stringify([...document.querySelectorAll('#eList li')].map(li => "
                   "li.dataset.kind + ' ' + li.innerText))")
        # a flapping stream's state changes (more than the page lists) do not push the
        # alert out: the page asks the server for alerts and actions only, by default
        flood = r.pipeline(transaction=False)
        for _ in range(600):
            flood.xadd("restrav:events", {"stream": "flap", "kind": "state", "state": "running",
                                          "previous": "reconnecting", "at": str(time.time()),
                                          "reason": "", "suppressed": "0"})
        flood.execute()
        await dt.evaluate("document.getElementById('eClose').click(), "
                          "document.getElementById('eventsBtn').click(), 1")
        r.xadd("restrav:events", {"stream": "marker", "kind": "control", "by": "test",
                                  "action": "paused", "at": str(time.time())})
        kinds = await until(dt, rows_js, lambda ks: any("marker" in k for k in ks), 30,
                            "a list read after the flood")
        assert any(k.startswith("alert_start ") for k in kinds), kinds
        assert not any(k.startswith("state ") for k in kinds), kinds
        await dt.evaluate(PICK_KIND_JS % "s.value = 'state'")
        kinds = await until(dt, rows_js, lambda ks: len(ks) == 100 and all(
            k.startswith("state ") for k in ks), 30, "the state changes")
        assert any("flap" in k and "running" in k for k in kinds), kinds
        await dt.evaluate(PICK_KIND_JS % "s.selectedIndex = 0")
        await until(dt, f"JSON.stringify(!!document.querySelector(\"{row}\"))",
                    lambda v: v is True, 30, "the alert again")
        acks = [ev for _, ev in r.xrange("restrav:events") if ev["kind"] == "acknowledged"]
        assert [(a["evidence"], a["by"]) for a in acks] == [(eid, "operator")]
        await screenshot(dt, tmp_path / "operator-page-events.png")
        # one click from the log to the record (the view emptied first)
        await dt.evaluate("document.getElementById('evView').hidden = true, "
                          "document.querySelector('#evFeatures tbody').replaceChildren(), 1")
        await dt.evaluate(f"document.querySelector(\"{row} .ev-open\").click(), 1")
        await until(dt, VIEW_JS, lambda v: not v["hidden"] and v["features"] == 21
                    and v["sheet"] > 0, 30, "the record from the log")
        # add a stream from the page: refused with its reason, then added
        await dt.evaluate("document.getElementById('addBtn').click(), 1")
        for sid, ok in (("bad id!", False), ("cam2", True)):
            await dt.evaluate(
                f"document.getElementById('addId').value = {json.dumps(sid)}, "
                "document.getElementById('addUrl').value = 'rtsp://127.0.0.1:9/none', "
                "document.getElementById('addForm').requestSubmit(), 1")
            msg = await until(dt, "JSON.stringify(document.getElementById('addMsg').textContent)",
                              lambda m: "…" not in m and m != "", 30, "the add outcome")
            assert msg == "cam2: created" if ok else msg.startswith("HTTP 422"), msg
        status, body = await svc.get_json("/streams/cam2", TOKEN)
        assert status == 200 and body["url"] == "rtsp://127.0.0.1:9/none"
        await until(dt, "JSON.stringify(document.querySelectorAll('.row').length)",
                    lambda n: n == 2, 30, "the new stream's row")
        urls: list[str] = json.loads(await dt.evaluate(
            "JSON.stringify(performance.getEntriesByType('resource').map(e => e.name))"))
        assert any(f"/evidence/{eid}/clip.mp4" in u for u in urls)
        assert any("/streams/cam/thumbnail" in u for u in urls)
        assert any(u.endswith("/streams") for u in urls)
        assert any(f"/evidence/{eid}/ack" in u for u in urls) and any("/events" in u for u in urls)
        assert not any(TOKEN in u for u in urls), urls
        errors: list[Any] = json.loads(await dt.evaluate("JSON.stringify(restravUi.errors)"))
        assert errors == []
    assert svc.rc == 0


@pytest.mark.slow
async def test_a_page_with_a_wrong_token_sees_no_image(
    tiny_model_dir: Path, redis_url: str, tmp_path: Path
) -> None:
    settings = page_settings(tmp_path, tiny_model_dir, redis_url)
    async with Service(settings) as svc, open_page(f"{svc.url}/#token=wrong", tmp_path) as dt:
        # the stream has frames: the right token gets its thumbnail
        async with ClientSession() as http:
            async def thumb() -> int:
                async with http.get(f"{svc.url}/streams/cam/thumbnail",
                                    headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                    return r.status
            for _ in range(300):
                if await thumb() == 200:
                    break
                await asyncio.sleep(0.2)
            assert await thumb() == 200
        # the page with a wrong token is sent to the token form, and its own fetch of the
        # thumbnail gets a JSON 401, never image bytes
        await until(dt, "JSON.stringify(!document.getElementById('login').hidden)",
                    lambda shown: shown is True, 30, "the token form")
        r = await dt.call("Runtime.evaluate", awaitPromise=True, returnByValue=True, expression=(
            "blobUrl('/streams/cam/thumbnail').then(u => 'image ' + u, e => String(e))"))
        assert r["result"]["value"] == "Error: HTTP 401"
        shown = json.loads(await dt.evaluate(
            "JSON.stringify([...document.images].filter(i => i.naturalWidth > 0).length)"))
        assert shown == 0
    assert svc.rc == 0


ROW_THUMB_JS = ("JSON.stringify((i => i ? [i.hidden ? 0 : i.naturalWidth, i.src] : [0, ''])"
                "(document.querySelector('.row[data-id=\"cam\"] .rowthumb')))")


@pytest.mark.slow
async def test_thumbnails_need_no_evidence_and_one_setting_turns_them_off(
    tiny_model_dir: Path, redis_url: str, tmp_path: Path
) -> None:
    """Evidence off (no ``serve.evidence.dir``): the row still shows the stream's latest
    frame, ``thumbnail_width`` wide, refreshed; ``serve.ui.thumbnails: false``: no
    thumbnail is served (404 ``thumbnails_off``), requested or shown."""
    base = page_settings(tmp_path, tiny_model_dir, redis_url)
    for on in (True, False):
        s = base.serve
        ui = s.ui.model_copy(update={"thumbnails": on, "thumbnail_width": 48})
        settings = base.model_copy(update={"serve": s.model_copy(update={
            "ui": ui, "evidence": EvidenceSettings()})})
        async with Service(settings) as svc, \
                open_page(f"{svc.url}/#token={TOKEN}", tmp_path) as dt:
            await until(dt, "JSON.stringify(document.querySelectorAll('.row').length)",
                        lambda n: n == 1, 60, "the stream's row")
            # every fetch the loaded page makes from now on is listed (resource timing
            # omits 404s whose body is not read)
            await dt.evaluate("window.asked = [], window.fetch = (f => (u, o) => "
                              "(window.asked.push(String(u)), f(u, o)))(window.fetch), 1")
            # scores flow (so frames were sampled) before looking for thumbnails
            await until(dt, "JSON.stringify(document.querySelector('.row .meta').innerText)",
                        lambda t: "running" in t, 60, "the stream running")
            if on:
                _, src = await until(dt, ROW_THUMB_JS, lambda v: v[0] == 48, 60,
                                     "the row's thumbnail")
                assert src.startswith("blob:")
                await until(dt, ROW_THUMB_JS, lambda v, old=src: v[1] != old and v[0] == 48, 30,
                            "the row's thumbnail refreshed")
                status, body = await svc.get_json("/evidence/1700000000000-cam-1", TOKEN)
                assert status == 404 and body["error"]["code"] == "evidence_off"
            else:
                await asyncio.sleep(3)  # several page updates, each of which could ask
                status, body = await svc.get_json("/streams/cam/thumbnail", TOKEN)
                assert status == 404 and body["error"]["code"] == "thumbnails_off"
                await dt.evaluate("document.querySelector('.row[data-id=\"cam\"]').click(), 1")
                await asyncio.sleep(1)
                shown = json.loads(await dt.evaluate(
                    "JSON.stringify([...document.images].filter(i => !i.hidden && "
                    "i.naturalWidth > 0).length)"))
                assert shown == 0
                asked: list[str] = json.loads(await dt.evaluate("JSON.stringify(asked)"))
                assert any("/ui/streams/cam" in u for u in asked), asked  # the detail opened
                assert not any("/thumbnail" in u for u in asked), asked
            errors: list[Any] = json.loads(await dt.evaluate("JSON.stringify(restravUi.errors)"))
            assert errors == []
        assert svc.rc == 0
