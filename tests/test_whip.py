"""The WHIP endpoint with real aiortc publishers: answers, refusals, limits, cleanup."""

from __future__ import annotations

import asyncio
import logging
import re

import numpy as np
import pytest
from aiohttp import ClientSession, web
from aiortc import RTCPeerConnection
from prometheus_client import CollectorRegistry

from monitor.config import WebRTCSettings
from monitor.metrics import WebRTCMetrics
from monitor.webrtc.tracks import TrackSource, WebRTCError
from monitor.webrtc.whip import WhipEndpoint
from tests.media import pattern_frame
from tests.webrtc_peers import ClipTrack, WhipPublisher, ice, serve_app, whip_offer

TOKEN = "s3cret-token"
W, H = 160, 120


def frames(n: int) -> list:  # type: ignore[type-arg]
    return [pattern_frame(i, W, H) for i in range(n)]


class Rig:
    """A WHIP endpoint on a real aiohttp server, recording published sources."""

    def __init__(self, **overrides: object) -> None:
        token = overrides.pop("token", TOKEN)
        opts: dict[str, object] = {"start_bitrate_kbps": 1500}
        opts.update(overrides)
        self.settings = WebRTCSettings(**opts)  # type: ignore[arg-type]
        self.registry = CollectorRegistry()
        self.metrics = WebRTCMetrics(self.registry)
        self.published: dict[str, TrackSource] = {}
        self.unpublished: list[tuple[str, str]] = []
        self.endpoint = WhipEndpoint(self.settings, token=token,  # type: ignore[arg-type]
                                     metrics=self.metrics,
                                     on_publish=self._pub, on_unpublish=self._unpub,
                                     is_known=lambda s: s in ("cam1", "cam2"),
                                     watchdog_interval_s=0.1)
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def _pub(self, stream: str, source: TrackSource) -> None:
        self.published[stream] = source

    async def _unpub(self, stream: str, reason: str) -> None:
        self.unpublished.append((stream, reason))

    async def __aenter__(self) -> Rig:
        app = web.Application()
        self.endpoint.add_routes(app)
        self.runner, self.url = await serve_app(app)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    def value(self, name: str, **labels: str) -> float:
        v = self.registry.get_sample_value(name, labels)
        return 0.0 if v is None else v


async def test_publish_delivers_every_frame_in_order_with_rtp_times() -> None:
    async with Rig() as rig:
        n = 30
        pub = WhipPublisher(rig.url, "cam1", ClipTrack(frames(n), fps=25.0), TOKEN)
        assert await pub.start() == 201
        assert pub.location is not None and pub.location.startswith("/whip/cam1/")
        src = rig.published["cam1"]
        got = []
        # aiortc's jitter buffer completes a frame when the next one starts: the last
        # frame of a finite clip is never delivered, so read n - 1
        for _ in range(n - 1):
            f = await asyncio.wait_for(src.recv(), 10)
            got.append(f)
        assert [f.index for f in got] == list(range(n - 1))
        assert got[0].rgb().shape == (H, W, 3)
        assert np.abs(got[0].rgb().astype(int) - frames(1)[0].astype(int)).mean() < 8
        # RTP clock, rebased to the first frame: 1/25 s apart, exactly (90 kHz ticks)
        assert [round(f.pts_s, 6) for f in got] == [round(i / 25.0, 6) for i in range(n - 1)]
        assert all(f.dropped_before == 0 for f in got)
        assert rig.value("restrav_webrtc_sessions", kind="whip") == 1
        assert await pub.stop() == 200
        assert rig.unpublished == [("cam1", "deleted")]
        assert rig.value("restrav_webrtc_sessions", kind="whip") == 0
        assert rig.value("restrav_webrtc_sessions_ended_total", kind="whip",
                         reason="deleted") == 1
        with pytest.raises(WebRTCError, match="whip:cam1"):
            await src.recv()
        assert rig.endpoint.sessions == {}


async def test_answer_headers_cors_and_bitrate_hint() -> None:
    async with Rig() as rig:
        pc = RTCPeerConnection(ice())
        pc.addTransceiver(ClipTrack(frames(5)), direction="sendonly")
        offer = await whip_offer(pc)
        async with ClientSession() as http:
            async with http.options(f"{rig.url}/whip/cam1",
                                    headers={"Origin": "https://example.org"}) as r:
                assert r.status == 204
                assert r.headers["Accept-Post"] == "application/sdp"
                assert r.headers["Access-Control-Allow-Origin"] == "*"
                assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
            async with http.post(f"{rig.url}/whip/cam1", data=offer, headers={
                "Content-Type": "application/sdp", "Authorization": f"Bearer {TOKEN}",
                "Origin": "https://example.org"}) as r:
                assert r.status == 201
                assert r.headers["Content-Type"] == "application/sdp"
                assert "Location" in r.headers["Access-Control-Expose-Headers"]
                assert r.headers["ETag"].startswith('"')
                answer = await r.text()
                loc = r.headers["Location"]
            assert answer.startswith("v=0")
            assert "x-google-start-bitrate=1500" in answer
            assert "a=recvonly" in answer
            async with http.patch(f"{rig.url}{loc}", data="a=end-of-candidates",
                                  headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                assert r.status == 405
            async with http.delete(f"{rig.url}{loc}") as r:  # no token
                assert r.status == 401
            async with http.delete(f"{rig.url}{loc}",
                                   headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                assert r.status == 200
            async with http.delete(f"{rig.url}{loc}",
                                   headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                assert r.status == 404
        await pc.close()


async def test_refusals_get_the_right_status_and_are_counted() -> None:
    async with Rig(max_offer_bytes=4096) as rig:
        pc = RTCPeerConnection(ice())
        pc.addTransceiver(ClipTrack(frames(5)), direction="sendonly")
        offer = await whip_offer(pc)
        await pc.close()
        good = {"Content-Type": "application/sdp", "Authorization": f"Bearer {TOKEN}"}

        async def post(stream: str, body: str, headers: dict[str, str]) -> tuple[int, dict]:  # type: ignore[type-arg]
            async with ClientSession() as http, http.post(
                f"{rig.url}/whip/{stream}", data=body, headers=headers
            ) as r:
                body = await r.json() if r.content_type == "application/json" else await r.text()
                return r.status, dict(r.headers) | {"json": body}

        st, h = await post("cam1", offer, {"Content-Type": "application/sdp"})
        assert st == 401 and h["WWW-Authenticate"] == "Bearer"
        st, _ = await post("cam1", offer, {**good, "Authorization": "Bearer nope"})
        assert st == 401
        st, h = await post("nosuch", offer, good)
        assert st == 404 and h["json"]["error"]["code"] == "unknown_stream"
        st, _ = await post("-bad", offer, good)
        assert st == 400
        st, _ = await post("cam1", offer, {**good, "Content-Type": "text/plain"})
        assert st == 415
        st, _ = await post("cam1", offer + "a=x-pad:" + "x" * 5000 + "\r\n", good)
        assert st == 413
        st, h = await post("cam1", "hello, not sdp", good)
        assert st == 400 and h["json"]["error"]["code"] == "bad_sdp"
        audio_only = "\r\n".join(
            line for line in offer.split("\r\n") if not line.startswith("m=video")
        ).replace("m=video", "m=audio")
        st, _ = await post("cam1", audio_only.replace("video", "audio"), good)
        assert st == 400
        no_fingerprint = offer.replace("a=fingerprint:", "a=x-fingerprint:")
        st, h = await post("cam1", no_fingerprint, good)
        assert st == 400, h
        bad_port = re.sub(r"m=video \d+", "m=video abc", offer)  # aiortc asserts on it
        st, h = await post("cam1", bad_port, good)
        assert st == 400 and h["json"]["error"]["code"] == "bad_sdp"
        no_codec = re.sub(r"(m=video \d+ \S+)( \d+)+", r"\1 ", offer)
        st, h = await post("cam1", no_codec, good)
        assert st == 400 and h["json"]["error"]["code"] == "bad_sdp"
        for reason, n in {"unauthorized": 2, "unknown_stream": 1, "bad_stream_id": 1,
                          "media_type": 1, "too_large": 1, "bad_sdp": 5}.items():
            assert rig.value("restrav_webrtc_requests_rejected_total", kind="whip",
                             reason=reason) == n, reason
        assert rig.endpoint.sessions == {}
        assert rig.value("restrav_webrtc_sessions", kind="whip") == 0


async def test_session_limit_and_conflict() -> None:
    async with Rig(max_sessions=1) as rig:
        a = WhipPublisher(rig.url, "cam1", ClipTrack(frames(10), loop=True), TOKEN)
        assert await a.start() == 201
        b = WhipPublisher(rig.url, "cam2", ClipTrack(frames(10), loop=True), TOKEN)
        assert await b.start() == 503
        await a.stop()
    async with Rig(max_sessions=4) as rig:
        a = WhipPublisher(rig.url, "cam1", ClipTrack(frames(10), loop=True), TOKEN)
        assert await a.start() == 201
        b = WhipPublisher(rig.url, "cam1", ClipTrack(frames(10), loop=True), TOKEN)
        assert await b.start() == 409
        await a.stop()
        assert rig.value("restrav_webrtc_requests_rejected_total", kind="whip",
                         reason="conflict") == 1


async def test_silent_publisher_is_cleaned_up() -> None:
    async with Rig(idle_timeout_s=0.8) as rig:
        track = ClipTrack(frames(10), loop=True)
        pub = WhipPublisher(rig.url, "cam1", track, TOKEN)
        assert await pub.start() == 201
        src = rig.published["cam1"]
        await asyncio.wait_for(src.recv(), 10)
        track.pause()
        for _ in range(100):
            if rig.unpublished and not rig.endpoint.sessions:
                break
            await asyncio.sleep(0.1)
        assert rig.unpublished == [("cam1", "idle")]
        assert rig.endpoint.sessions == {}
        assert rig.value("restrav_webrtc_sessions_ended_total", kind="whip", reason="idle") == 1
        await pub.stop()  # DELETE of an ended session: 404, harmless


async def test_audio_is_answered_inactive_and_video_still_flows() -> None:
    from aiortc.mediastreams import AudioStreamTrack

    async with Rig() as rig:
        pub = WhipPublisher(rig.url, "cam2", ClipTrack(frames(10), loop=True), TOKEN,
                            audio=AudioStreamTrack())
        assert await pub.start() == 201
        f = await asyncio.wait_for(rig.published["cam2"].recv(), 10)
        assert f.rgb().shape == (H, W, 3)
        assert rig.value("restrav_webrtc_audio_tracks_ignored_total", kind="whip") == 1
        await pub.stop()


async def test_no_token_configured_refuses_everyone() -> None:
    async with Rig(token=None) as rig:
        pub = WhipPublisher(rig.url, "cam1", ClipTrack(frames(5)), TOKEN)
        assert await pub.start() == 401


async def test_publisher_page_is_served() -> None:
    async with Rig() as rig, ClientSession() as http, http.get(f"{rig.url}/publish") as r:
        assert r.status == 200
        html = await r.text()
        assert "/whip/" in html and "getUserMedia" in html and "getDisplayMedia" in html


async def test_chunked_offer_is_read_whole_and_bounded() -> None:
    async with Rig(max_offer_bytes=8192) as rig:
        pc = RTCPeerConnection(ice())
        pc.addTransceiver(ClipTrack(frames(30), loop=True), direction="sendonly")
        offer = await whip_offer(pc)

        async def pieces(data: bytes):  # type: ignore[no-untyped-def]
            for i in range(0, len(data), 100):  # many small chunks, Transfer-Encoding: chunked
                yield data[i:i + 100]
                await asyncio.sleep(0)

        h = {"Content-Type": "application/sdp", "Authorization": f"Bearer {TOKEN}"}
        try:
            async with ClientSession() as http:
                async with http.post(f"{rig.url}/whip/cam1", data=pieces(offer.encode()),
                                     headers=h) as r:
                    assert r.status == 201
                    loc = r.headers["Location"]
                async with http.delete(f"{rig.url}{loc}", headers=h) as r:
                    assert r.status == 200
                big = (offer + "a=x-pad:" + "x" * 9000 + "\r\n").encode()
                async with http.post(f"{rig.url}/whip/cam1", data=pieces(big), headers=h) as r:
                    assert r.status == 413
        finally:
            await pc.close()


async def test_codec_preference_h264_is_answered_and_decoded() -> None:
    async with Rig(video_codecs=("H264", "VP8")) as rig:
        pub = WhipPublisher(rig.url, "cam1", ClipTrack(frames(30), loop=True), TOKEN)
        try:
            assert await pub.start() == 201
            assert pub.pc is not None
            answer = pub.pc.remoteDescription.sdp
            video = answer.split("m=video", 1)[1]
            first_pt = video.split("\r\n", 1)[0].split()[2]  # " PORT PROTO PT ..."
            assert f"a=rtpmap:{first_pt} H264/90000" in video
            f = await asyncio.wait_for(rig.published["cam1"].recv(), 10)
            assert f.rgb().shape == (H, W, 3)
            assert len(rig.endpoint.sessions) == 1
            (session,) = rig.endpoint.sessions.values()
            assert len(session.pc.getTransceivers()) == 1  # the preference one was matched
        finally:
            await pub.stop()


MALFORMED = {
    # aiortc's parser raised StopIteration here, a RuntimeError (500) inside the handler
    "fmtp_for_absent_payload_type": lambda o: o.replace(
        "a=rtcp-mux\r\n", "a=rtcp-mux\r\na=fmtp:119 apt=118\r\n", 1),
    "fmtp_without_parameters": lambda o: re.sub(r"a=fmtp:(\d+) [^\r]*", r"a=fmtp:\1", o,
                                                count=1),
    "rtpmap_not_a_number": lambda o: re.sub(r"a=rtpmap:\d+", "a=rtpmap:x", o, count=1),
    "no_setup": lambda o: re.sub(r"a=setup:\w+\r\n", "", o),
    "no_ice_pwd": lambda o: re.sub(r"a=ice-pwd:[^\r]*\r\n", "", o),
    "truncated": lambda o: o[: len(o) // 2],
    # aiortc parses it, then fails re-serialising its own copy of the offer
    "nul_in_connection_address": lambda o: re.sub(r"(c=IN IP4 [0-9.]+)", "\\1\x00", o,
                                                  count=1),
}


@pytest.mark.parametrize("mutation", sorted(MALFORMED))
async def test_every_malformed_offer_gets_a_400_and_one_log_line(
    mutation: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with Rig() as rig:
        pc = RTCPeerConnection(ice())
        pc.addTransceiver(ClipTrack(frames(5)), direction="sendonly")
        offer = await whip_offer(pc)
        await pc.close()
        bad = MALFORMED[mutation](offer)
        assert bad != offer
        caplog.set_level(logging.INFO, logger="monitor")
        caplog.clear()
        async with ClientSession() as http, http.post(
            f"{rig.url}/whip/cam1", data=bad,
            headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {TOKEN}"},
        ) as r:
            assert r.status == 400, await r.text()
            body = await r.json()
        assert body["error"]["code"] == "bad_sdp" and body["error"]["message"]
        lines = [rec.getMessage() for rec in caplog.records if rec.name.startswith("monitor")]
        assert len(lines) == 1 and "400 bad_sdp" in lines[0], lines
        assert rig.value("restrav_webrtc_requests_rejected_total", kind="whip",
                         reason="bad_sdp") == 1
        assert rig.endpoint.sessions == {}
        assert rig.value("restrav_webrtc_sessions", kind="whip") == 0


async def test_vp8_answer_carries_start_and_min_bitrate() -> None:
    """VP8 has no a=fmtp line of its own: the hint is added through the SDP parser."""
    from aiortc import RTCRtpSender
    from aiortc import sdp as aiosdp

    async with Rig() as rig:
        pc = RTCPeerConnection(ice())
        tr = pc.addTransceiver(ClipTrack(frames(5)), direction="sendonly")
        tr.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs
                                if c.mimeType == "video/VP8"])
        offer = await whip_offer(pc)
        await pc.close()
        assert "a=fmtp" not in offer.split("m=video", 1)[1]  # VP8 only, no fmtp line
        async with ClientSession() as http, http.post(
            f"{rig.url}/whip/cam1", data=offer,
            headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {TOKEN}"},
        ) as r:
            assert r.status == 201
            answer = await r.text()
            loc = r.headers["Location"]
        video = next(m for m in aiosdp.SessionDescription.parse(answer).media
                     if m.kind == "video")
        vp8 = [c for c in video.rtp.codecs if c.mimeType == "video/VP8"]
        assert vp8 and vp8[0].parameters == {"x-google-start-bitrate": "1500",
                                             "x-google-min-bitrate": "750"}
        assert "a=setup:passive" in answer  # the offer said actpass: we are the DTLS server
        await rig.endpoint.end(loc.rsplit("/", 1)[1], "deleted")
