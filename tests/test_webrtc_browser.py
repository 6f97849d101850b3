"""Headless Chromium publishes its (fake) camera through the publisher page; scores appear.

Chromium's fake camera plays a y4m clip written here; the page served by
`restrav serve` captures it with getUserMedia, publishes with WHIP and polls
the stream's score. The test drives the page through the DevTools protocol,
waits for scores in Redis and on the page, and saves a screenshot taken
mid-stream (``Page.captureScreenshot``). Skipped only where Chromium is not
installed (``apt-get install chromium``; CI installs it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from aiohttp import ClientSession

from tests.media import pattern_frame
from tests.test_webrtc_service import TOKEN, settings_for, wait_scores
from tests.webrtc_peers import Service, free_port, tiny_classifier

CHROMIUM = "/usr/lib/chromium/chromium"
W, H, FPS = 320, 240, 25

pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"Chromium is not installed ({CHROMIUM}); apt-get install -y chromium",
)


def write_y4m(path: Path, n: int = 100) -> Path:
    """A 4:2:0 y4m clip of moving patterns for Chromium's fake camera."""
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{W} H{H} F{FPS}:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(n):
            rgb = pattern_frame(i, W, H, motion="jitter")
            yuv = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            f.write(b"FRAME\n")
            f.write(yuv.to_ndarray().tobytes())  # Y plane, then U, then V
    return path


class DevTools:
    """A minimal Chrome DevTools protocol client over one page's websocket."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.next_id = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        mid = self.next_id
        await self.ws.send_json({"id": mid, "method": method, "params": params})
        while True:
            msg = await asyncio.wait_for(self.ws.receive_json(), 30)
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return dict(msg["result"])

    async def evaluate(self, expr: str) -> Any:
        r = await self.call("Runtime.evaluate", expression=expr, returnByValue=True)
        return r["result"].get("value")


async def page_socket(http: ClientSession, port: int, timeout_s: float = 30,
                      url_part: str = "/publish") -> str:
    """The websocket URL of the browser's first page target whose URL has ``url_part``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        with contextlib.suppress(OSError):
            async with http.get(f"http://127.0.0.1:{port}/json") as r:
                for target in await r.json(content_type=None):
                    if target.get("type") == "page" and url_part in target.get("url", ""):
                        return str(target["webSocketDebuggerUrl"])
        await asyncio.sleep(0.2)
    raise TimeoutError("Chromium's DevTools endpoint did not come up")


@pytest.mark.slow
async def test_chromium_publishes_through_the_page_and_scores_appear(
    tiny_model_dir: Path, redis_url: str, tmp_path: Path
) -> None:
    clip = write_y4m(tmp_path / "camera.y4m")
    settings = settings_for(tiny_model_dir, redis_url, tiny_classifier(tmp_path / "clf"),
                            whip_any_stream=True)
    debug_port = free_port()
    async with Service(settings) as svc:
        # the README's form: autostart in the fragment, beside the token
        page = f"{svc.url}/publish?stream=browser1#token={TOKEN}&autostart=1"
        args = [
            CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
            "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={clip}",
            "--disable-features=WebRtcHideLocalIpsWithMdns",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
            f"--remote-debugging-port={debug_port}", "--window-size=1000,700", page,
        ]
        browser = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            scores = await wait_scores(redis_url, "browser1", 5, timeout_s=90)
            if len(scores) < 5:
                pytest.fail(f"no scores from the browser; page state: "
                            f"{await _page_state(debug_port)}")
            async with ClientSession() as http, http.ws_connect(
                await page_socket(http, debug_port), max_msg_size=64 * 2**20
            ) as ws:
                dt = DevTools(ws)
                state: dict[str, Any] = {}
                for _ in range(100):  # the page polls its score once a second
                    state = json.loads(await dt.evaluate("JSON.stringify(window.restrav)"))
                    if state.get("scores", 0) > 0 and state.get("lastScore"):
                        break
                    await asyncio.sleep(0.2)
                assert state["state"] == "connected", state
                assert state["scores"] > 0 and state["lastScore"]["p_ai"] is not None, state
                shown = await dt.evaluate("document.getElementById('score').textContent")
                assert shown.endswith("%"), shown
                shot = await dt.call("Page.captureScreenshot", format="png")
            png = base64.b64decode(shot["data"])
            out = tmp_path / "publish-page.png"
            out.write_bytes(png)
            keep = os.environ.get("RESTRAV_TEST_ARTIFACTS")
            if keep:
                Path(keep).mkdir(parents=True, exist_ok=True)
                shutil.copy(out, Path(keep) / out.name)
            print(f"\nscreenshot: {out} ({len(png)} bytes); page state: {state}")
            assert png[:8] == b"\x89PNG\r\n\x1a\n"
            img = _decode_png(out)
            assert img.shape[0] >= 500 and img.shape[1] >= 800
            assert img.std() > 10  # the video and the text, not a blank page
            text = await svc.metrics_text()
            assert 'restrav_webrtc_sessions{kind="whip"} 1.0' in text
        finally:
            stop_browser(browser)
        for _ in range(100):  # the browser is gone: its session ends (ICE fails or idles)
            st, _ = await svc.get_json("/streams/browser1", TOKEN)
            if st == 404:
                break
            await asyncio.sleep(0.2)
        assert st == 404


def stop_browser(browser: subprocess.Popen[bytes]) -> None:
    """Terminate Chromium (kill it if it lingers) and close its stderr pipe."""
    browser.terminate()
    try:
        browser.wait(timeout=15)
    except subprocess.TimeoutExpired:
        browser.kill()
        browser.wait()
    if browser.stderr is not None:
        browser.stderr.close()


async def _page_state(port: int) -> Any:
    with contextlib.suppress(Exception):
        async with ClientSession() as http, http.ws_connect(await page_socket(http, port, 5)) as ws:
            return await DevTools(ws).evaluate("JSON.stringify(window.restrav)")
    return None


def _decode_png(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        frame = next(c.decode(video=0))
        return np.asarray(frame.to_ndarray(format="rgb24"))
