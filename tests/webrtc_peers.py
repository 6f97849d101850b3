"""Real aiortc peers for the WebRTC tests: a clip track, a WHIP publisher, a WHEP server.

Nothing is mocked: frames are encoded by aiortc (VP8 by default), sent over
ICE/DTLS/SRTP on this machine's address and decoded by the receiving peer.
"""

from __future__ import annotations

import asyncio
import fractions
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np
from aiohttp import ClientSession, web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

VIDEO_TIME_BASE = fractions.Fraction(1, 90000)


class ClipTrack(MediaStreamTrack):
    """Sends RGB frames at ``fps`` in real time, pts on a 90 kHz clock.

    ``loop=True`` starts over at the end (a live camera); otherwise the track
    ends after the last frame. ``pause()`` stops sending without ending the
    track (a publisher that goes silent).
    """

    kind = "video"

    def __init__(self, frames: Sequence[np.ndarray], fps: float = 25.0, loop: bool = False,
                 on_sent: Callable[[int, float], None] | None = None) -> None:
        super().__init__()
        self.frames = list(frames)
        self.fps = fps
        self.loop = loop
        self.sent = 0
        self._t0: float | None = None
        self._paused = asyncio.Event()
        self._paused.set()
        self._skip = 0
        self.on_sent = on_sent

    def pause(self) -> None:
        """Stop sending frames (the track stays live)."""
        self._paused.clear()

    def skip(self, frames: int) -> None:
        """Lose the next ``frames`` frames: the RTP clock jumps over them, as a receiver
        sees a stretch of lost packets or a camera that froze and resumed."""
        self._skip += frames

    async def recv(self) -> av.VideoFrame:
        """The next frame, paced at ``fps``."""
        await self._paused.wait()
        if self.readyState != "live":
            raise MediaStreamError
        if self._skip:
            self.sent += self._skip
            self._skip = 0
        i = self.sent
        if i >= len(self.frames) and not self.loop:
            self.stop()
            raise MediaStreamError
        if self._t0 is None:
            self._t0 = time.monotonic()
        due = self._t0 + i / self.fps
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        frame = av.VideoFrame.from_ndarray(self.frames[i % len(self.frames)], format="rgb24")
        frame.pts = round(i * 90000 / self.fps)
        frame.time_base = VIDEO_TIME_BASE
        self.sent += 1
        if self.on_sent is not None:
            self.on_sent(i, time.monotonic())
        return frame


def ice() -> RTCConfiguration:
    """No STUN: host candidates only."""
    return RTCConfiguration(iceServers=[])


async def whip_offer(pc: RTCPeerConnection) -> str:
    """Create and apply an offer; return its SDP (aiortc gathers every candidate first)."""
    await pc.setLocalDescription(await pc.createOffer())
    return str(pc.localDescription.sdp)


class WhipPublisher:
    """An aiortc WHIP client: ``await start()`` POSTs the offer, ``await stop()`` DELETEs."""

    def __init__(self, base_url: str, stream: str, track: MediaStreamTrack,
                 token: str | None, audio: MediaStreamTrack | None = None) -> None:
        self.base_url = base_url
        self.stream = stream
        self.track = track
        self.audio = audio
        self.token = token
        self.pc: RTCPeerConnection | None = None
        self.location: str | None = None
        self.status: int | None = None

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/sdp"}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        return h

    async def start(self) -> int:
        """Publish; returns the HTTP status (201 on success)."""
        pc = RTCPeerConnection(ice())
        self.pc = pc
        pc.addTransceiver(self.track, direction="sendonly")
        if self.audio is not None:
            pc.addTransceiver(self.audio, direction="sendonly")
        offer = await whip_offer(pc)
        async with ClientSession() as http, http.post(
            f"{self.base_url}/whip/{self.stream}", data=offer, headers=self._headers()
        ) as resp:
            self.status = resp.status
            if resp.status != 201:
                await pc.close()
                return resp.status
            self.location = resp.headers["Location"]
            answer = await resp.text()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        return 201

    async def stop(self) -> int | None:
        """DELETE the session and close the peer; returns the DELETE status."""
        status = None
        if self.location is not None:
            h = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            async with ClientSession() as http, http.delete(
                f"{self.base_url}{self.location}", headers=h
            ) as resp:
                status = resp.status
            self.location = None
        if self.pc is not None:
            await self.pc.close()
        return status


class WhepServer:
    """A WHEP server over aiortc serving one looping clip at ``/whep/{name}``.

    ``start()``/``stop()`` run and stop it on a fixed port (so a restart keeps
    the URL); ``stop()`` closes every viewer's peer connection, as a crashed or
    restarted media server would.
    """

    def __init__(self, frames: Sequence[np.ndarray], fps: float = 25.0, port: int = 0,
                 token: str | None = None, location_base: str = "") -> None:
        self.location_base = location_base  # e.g. another server: a cross-origin Location
        self.frames = list(frames)
        self.fps = fps
        self.port = port
        self.token = token
        self.sessions: dict[str, RTCPeerConnection] = {}
        self.posts = 0
        self.deletes = 0
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    @property
    def url(self) -> str:
        """The WHEP endpoint of stream ``cam``."""
        return f"http://127.0.0.1:{self.port}/whep/cam"

    async def _post(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization")
        if self.token is not None and auth != f"Bearer {self.token}":
            return web.Response(status=401)
        self.posts += 1
        offer = await request.text()
        pc = RTCPeerConnection(ice())
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        track = ClipTrack(self.frames, self.fps, loop=True)
        for tr in pc.getTransceivers():
            if tr.kind == "video":
                tr.sender.replaceTrack(track)
                tr.direction = "sendonly"
        await pc.setLocalDescription(await pc.createAnswer())
        sid = secrets.token_hex(8)
        self.sessions[sid] = pc
        return web.Response(status=201, text=pc.localDescription.sdp,
                            content_type="application/sdp",
                            headers={"Location": f"{self.location_base}/whep/cam/{sid}"})

    async def _delete(self, request: web.Request) -> web.Response:
        self.deletes += 1
        pc = self.sessions.pop(request.match_info["sid"], None)
        if pc is None:
            return web.Response(status=404)
        await pc.close()
        return web.Response(status=200)

    async def start(self) -> None:
        """Listen on 127.0.0.1:port (a free port the first time)."""
        app = web.Application()
        app.router.add_post("/whep/cam", self._post)
        app.router.add_delete("/whep/cam/{sid}", self._delete)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = self._site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        if self.port == 0:
            self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        """Stop listening, then close every session and the server.

        Listening stops first: a viewer whose session dies answers with a DELETE at
        once, and a connection accepted while the runner shut down was seen left
        unclosed (an aiohttp RequestHandler transport, a ResourceWarning at garbage
        collection that failed the test); a crashed server takes no request either."""
        if self._site is not None:
            await self._site.stop()
            self._site = None
        for pc in list(self.sessions.values()):
            await pc.close()
        self.sessions.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def serve_app(app: web.Application) -> tuple[web.AppRunner, str]:
    """Run ``app`` on a free port of 127.0.0.1; return the runner and base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (:func:`tests.redisproc.free_port`)."""
    from tests.redisproc import free_port as free

    return free()


def tiny_classifier(directory: Path) -> Path:
    """A logistic-regression artifact fitted on synthetic features (scores in (0, 1))."""
    from monitor.learn.fitting import fit_classifier

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (64, 21)), rng.normal(0.5, 1, (64, 21))])
    y = np.array([0] * 64 + [1] * 64)
    clf = fit_classifier(x, y, kind="logreg", threshold_mode="f1")
    clf.save(directory)
    return directory


class Service:
    """`restrav serve` running in this event loop (the real composition), on a free port.

    ``async with Service(settings) as svc``: ``svc.url`` is the API base URL.
    """

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.port = int(settings.serve.api.port)
        self.url = f"http://127.0.0.1:{self.port}"
        self.stop = asyncio.Event()
        self.task: asyncio.Task[int] | None = None
        self.rc: int | None = None

    async def __aenter__(self) -> Service:
        from workers.serve_cmd import serve

        self.task = asyncio.create_task(serve(self.settings, self.stop))
        deadline = time.monotonic() + 60
        async with ClientSession() as http:
            while time.monotonic() < deadline:
                if self.task.done():
                    self.task.result()
                try:
                    async with http.get(f"{self.url}/healthz") as r:
                        if r.status == 200:
                            return self
                except OSError:
                    pass
                await asyncio.sleep(0.1)
        raise TimeoutError("restrav serve did not start")

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        self.rc = await asyncio.wait_for(self.task, 60)

    async def get_json(self, path: str, token: str | None = None) -> tuple[int, Any]:
        """GET a JSON route; returns (status, body or None)."""
        h = {"Authorization": f"Bearer {token}"} if token else {}
        async with ClientSession() as http, http.get(f"{self.url}{path}", headers=h) as r:
            body = await r.json() if r.content_type == "application/json" else None
            return r.status, body

    async def metrics_text(self) -> str:
        """The Prometheus exposition."""
        async with ClientSession() as http, http.get(f"{self.url}/metrics") as r:
            return await r.text()


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """One sample's value from Prometheus text, or None."""
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None
