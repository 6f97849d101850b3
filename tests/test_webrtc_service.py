"""WebRTC through `restrav serve`: WHIP publishers and WHEP pulls end to end, with real
aiortc peers, a real redis-server and the tiny DINOv2.

The feature check compares each streamed window with ``window_features`` of the
same 24 frames *as the engine received them* (decoded VP8, captured where the
engine converts them to RGB): that equality is exact up to float rounding. How
far those features are from the ones of the original (pre-encoding) frames is
measured and printed, not asserted.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis

import monitor.webrtc.tracks as webrtc_source
from monitor import keys
from monitor.config import Settings, load_settings
from monitor.core.geometry import window_features
from monitor.types import SAMPLE_INTERVAL_S, WINDOW_SAMPLES
from tests.media import pattern_frame
from tests.webrtc_peers import (
    ClipTrack,
    Service,
    WhepServer,
    WhipPublisher,
    free_port,
    metric_value,
    tiny_classifier,
)

TOKEN = "tok-123"
W, H = 160, 120
FPS = 25.0


def settings_for(model_dir: Path, redis_url: str, clf_dir: Path | None = None,
                 streams: list[dict[str, Any]] | None = None, **webrtc: Any) -> Settings:
    """Service settings: tiny model on CPU, Redis, API token, quick backoff."""
    over: dict[str, Any] = {
        "model": {"ref": str(model_dir), "device": "cpu", "batch_size": 8},
        "redis": {"url": redis_url},
        "serve": {
            "api": {"port": free_port(), "token": TOKEN},
            "streams": streams or [],
            "persist_streams": False,
            "source": {"backoff": {"floor_s": 0.2, "cap_s": 1.0}, "open_timeout_s": 10.0},
            "engine": {"max_batch": 8, "max_wait_ms": 5.0},
        },
        "webrtc": {"idle_timeout_s": 3.0, **webrtc},
    }
    if clf_dir is not None:
        over["classifier"] = {"path": str(clf_dir)}
    return load_settings(None, **over)


async def read_scores(redis_url: str, stream: str) -> list[dict[str, str]]:
    """Every score entry of ``stream`` in Redis, oldest first."""
    r = aioredis.from_url(redis_url, decode_responses=True)
    try:
        entries = await r.xrange(keys.stream_scores(stream))
    finally:
        await r.aclose()
    return [fields for _, fields in entries]


async def wait_scores(redis_url: str, stream: str, n: int, timeout_s: float = 60.0,
                      where: Any = None) -> list[dict[str, str]]:
    """Wait until ``stream`` has ``n`` scores (matching ``where``) in Redis."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        got = [s for s in await read_scores(redis_url, stream) if where is None or where(s)]
        if len(got) >= n or loop.time() > deadline:
            return got
        await asyncio.sleep(0.2)


class FrameRecorder:
    """Records every frame the engine converts to RGB, keyed by its RTP time (a probe at
    the one place the engine reads pixels; the conversion itself is unchanged)."""

    def __init__(self) -> None:
        self.frames: dict[float, np.ndarray] = {}
        self.lock = threading.Lock()
        self.real = webrtc_source.frame_to_rgb

    def __call__(self, frame: Any) -> np.ndarray:
        rgb = self.real(frame)
        with self.lock:
            self.frames[round(webrtc_source.rtp_seconds(frame), 6)] = rgb.copy()
        return rgb

    def on_screen(self, t: float) -> tuple[float, np.ndarray]:
        """The recorded frame with the largest time <= t (what the sampler picked).

        Redis keeps start_s to 6 decimals: allow that rounding when a sample time
        falls exactly on a frame time (2.0 s = 46 samples = 50 frames)."""
        with self.lock:
            pts = max(p for p in self.frames if p <= t + 5e-6)
            return pts, self.frames[pts]


def window_frames(rec: FrameRecorder, start_s: float) -> tuple[list[float], list[np.ndarray]]:
    times = [start_s + k * SAMPLE_INTERVAL_S for k in range(WINDOW_SAMPLES)]
    picked = [rec.on_screen(t) for t in times]
    return [p for p, _ in picked], [f for _, f in picked]


async def test_whip_publisher_scores_reach_redis_and_equal_batch_features(
    tiny_model_dir: Path, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers.common import build_embedder

    rec = FrameRecorder()
    monkeypatch.setattr(webrtc_source, "frame_to_rgb", rec)
    clf = tiny_classifier(tmp_path / "clf")
    settings = settings_for(tiny_model_dir, redis_url, clf, whip_any_stream=True)
    originals = [pattern_frame(i, W, H, motion="jitter") for i in range(100)]
    async with Service(settings) as svc:
        pub = WhipPublisher(svc.url, "pub1", ClipTrack(originals, fps=FPS), TOKEN)
        assert await pub.start() == 201
        try:
            scores = await wait_scores(redis_url, "pub1", 12)
            assert len(scores) >= 12, scores
            # the stream is a stream like any other: API, metrics, Redis latest
            st, body = await svc.get_json("/streams/pub1", TOKEN)
            assert st == 200 and body["kind"] == "whip" and body["windows_scored"] >= 12
            st, mine = await svc.get_json("/whip/pub1/score", TOKEN)
            assert st == 200 and mine["last_score"]["p_ai"] is not None
            text = await svc.metrics_text()
            assert metric_value(text, "restrav_webrtc_sessions", kind="whip") == 1
            assert (metric_value(text, "restrav_stream_windows_scored_total", stream="pub1")
                    or 0) >= 12
            r = aioredis.from_url(redis_url, decode_responses=True)
            latest = await r.hgetall(keys.stream_latest("pub1"))
            await r.aclose()
            assert 0.0 <= float(latest["p_ai"]) <= 1.0
        finally:
            await pub.stop()
        for _ in range(50):  # the session's end removes the stream it created
            st, _ = await svc.get_json("/streams/pub1", TOKEN)
            if st == 404:
                break
            await asyncio.sleep(0.1)
        assert st == 404
        text = await svc.metrics_text()
        assert metric_value(text, "restrav_webrtc_sessions", kind="whip") == 0

    embedder = build_embedder(settings)
    worst_rel = 0.0
    worst_orig = 0.0
    segment0 = [s for s in scores if s["segment"] == "0"]
    assert len(segment0) >= 12
    for s in segment0[:12]:
        streamed = np.array(json.loads(s["features"]))
        start = float(s["start_s"])
        pts, frames = window_frames(rec, start)
        assert pts[-1] == pytest.approx(float(s["end_s"]), abs=SAMPLE_INTERVAL_S)
        z = embedder.embed_tensor(frames).double().cpu().numpy()
        batch = window_features(z).features
        np.testing.assert_allclose(streamed, batch, rtol=1e-6, atol=1e-6)
        worst_rel = max(worst_rel, float(np.max(np.abs(streamed - batch) / (np.abs(batch) + 1e-9))))
        # the same window on the original frames (RTP time i/25 s <-> frame i)
        orig = [originals[round(p * FPS)] for p in pts]
        zo = embedder.embed_tensor(orig).double().cpu().numpy()
        fo = window_features(zo).features
        worst_orig = max(worst_orig, float(np.max(np.abs(batch - fo) / (np.abs(fo) + 1e-9))))
    print(f"\nstreamed vs batch on received frames: max relative difference {worst_rel:.2e}")
    print(f"received (VP8) vs original frames: max relative feature difference {worst_orig:.3f}")
    assert svc.rc == 0


async def test_declared_whip_stream_takes_publisher_after_publisher(
    tiny_model_dir: Path, redis_url: str
) -> None:
    settings = settings_for(tiny_model_dir, redis_url,
                            streams=[{"id": "cam1", "url": "whip://cam1"}])
    frames = [pattern_frame(i, W, H) for i in range(40)]
    async with Service(settings) as svc:
        bad = WhipPublisher(svc.url, "cam9", ClipTrack(frames), TOKEN)
        assert await bad.start() == 404  # not declared, and whip_any_stream is off
        seen = -1  # the highest segment scored so far: each publisher starts a new one
        for _ in range(2):
            pub = WhipPublisher(svc.url, "cam1", ClipTrack(frames, loop=True), TOKEN)
            assert await pub.start() == 201
            try:
                got = await wait_scores(redis_url, "cam1", 3, where=lambda s, after=seen:
                                        int(s["segment"]) > after)
                assert len(got) >= 3
            finally:
                await pub.stop()
            seen = max(int(s["segment"]) for s in await read_scores(redis_url, "cam1"))
            await asyncio.sleep(0.3)
        st, body = await svc.get_json("/streams/cam1", TOKEN)
        assert st == 200 and body["kind"] == "whip"
        assert body["reconnects"] >= 1  # the second publisher
        assert body["gaps"].get("reconnect", 0) >= 1


async def test_whep_pull_survives_a_server_restart(tiny_model_dir: Path, redis_url: str) -> None:
    frames = [pattern_frame(i, W, H) for i in range(50)]
    server = WhepServer(frames, fps=FPS, port=free_port(), token="whep-secret")
    await server.start()
    url = f"whep+http://:whep-secret@127.0.0.1:{server.port}/whep/cam"
    settings = settings_for(tiny_model_dir, redis_url,
                            streams=[{"id": "pull1", "url": url}])
    try:
        async with Service(settings) as svc:
            first = await wait_scores(redis_url, "pull1", 3)
            assert len(first) >= 3
            await server.stop()  # the media server goes away: every session dies
            await asyncio.sleep(1.0)
            seen = max(int(s["segment"]) for s in await read_scores(redis_url, "pull1"))
            await server.start()  # back on the same port
            again = await wait_scores(redis_url, "pull1", 3,
                                      where=lambda s: int(s["segment"]) > seen)
            assert len(again) >= 3
            text = await svc.metrics_text()
            assert (metric_value(text, "restrav_stream_reconnects_total", stream="pull1")
                    or 0) >= 1
            assert (metric_value(text, "restrav_webrtc_whep_connects_total", stream="pull1",
                                 outcome="ok") or 0) >= 2
            st, body = await svc.get_json("/streams/pull1", TOKEN)
            assert st == 200 and body["state"] == "running" and body["reconnects"] >= 1
            assert "whep-secret" not in json.dumps(body) and "whep-secret" not in text
    finally:
        await server.stop()
    assert server.posts >= 2


def _rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * 4096


def _peer_connections() -> int:
    import gc

    from aiortc import RTCPeerConnection

    gc.collect()
    # type() rather than isinstance(): some torch module proxies warn on __class__ access
    return sum(1 for o in gc.get_objects() if type(o) is RTCPeerConnection)


def _threads() -> tuple[int, list[str]]:
    """Pooled executor threads (bounded by their pool), and every other thread's name."""
    pooled = 0
    others = []
    for t in threading.enumerate():
        if t.name.startswith(("ThreadPoolExecutor", "asyncio_")):
            pooled += 1
        elif t.name == "tqdm_monitor":  # tqdm's process-wide singleton, comes and goes
            continue
        else:
            others.append(t.name)
    return pooled, sorted(others)


@pytest.mark.slow
async def test_twenty_publish_cycles_leave_no_peer_connections_threads_or_memory(
    tiny_model_dir: Path, redis_url: str
) -> None:
    settings = settings_for(tiny_model_dir, redis_url, whip_any_stream=True)
    frames = [pattern_frame(i, W, H) for i in range(25)]

    async def cycle(svc: Service) -> None:
        pub = WhipPublisher(svc.url, "cyc", ClipTrack(frames, fps=FPS, loop=True), TOKEN)
        assert await pub.start() == 201
        try:
            for _ in range(100):
                st, body = await svc.get_json("/streams/cyc", TOKEN)
                if st == 200 and body["frames"] >= 10:
                    break
                await asyncio.sleep(0.05)
            assert st == 200 and body["frames"] >= 10
        finally:
            assert await pub.stop() == 200
        for _ in range(100):
            st, _ = await svc.get_json("/streams/cyc", TOKEN)
            if st == 404:
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the stream outlived its session")

    async with Service(settings) as svc:
        for _ in range(3):  # warm up: model, executors, codec contexts, allocator pools
            await cycle(svc)
        await asyncio.sleep(0.5)
        base_pcs = _peer_connections()
        base_pool, base_threads = _threads()
        base_rss = _rss_bytes()
        for _ in range(20):
            await cycle(svc)
        await asyncio.sleep(0.5)
        pcs = _peer_connections()
        pool, threads = _threads()
        rss = _rss_bytes()
        text = await svc.metrics_text()
    growth_mb = (rss - base_rss) / 2**20
    print(f"\n20 cycles: peer connections {base_pcs} -> {pcs}, threads {base_threads} + "
          f"{base_pool} pooled -> {threads} + {pool} pooled, RSS {base_rss / 2**20:.1f} -> "
          f"{rss / 2**20:.1f} MiB ({growth_mb:+.1f} MiB)")
    assert pcs == 0 and base_pcs == 0
    # no thread was added by the cycles; the baseline may still hold an earlier test's
    # engine threads on their way out (a loaded machine), which may end meanwhile
    assert not Counter(threads) - Counter(base_threads), (base_threads, threads)
    assert pool <= max(base_pool, 32)
    assert metric_value(text, "restrav_webrtc_sessions", kind="whip") == 0
    assert metric_value(text, "restrav_webrtc_sessions_started_total", kind="whip") == 23
    # noise measured on this machine is a few MiB; a leaked session (decoder, buffers,
    # ICE/DTLS state) costs more than 1 MiB each, so 20 leaks would exceed this bound
    assert growth_mb < 24, f"RSS grew {growth_mb:.1f} MiB over 20 cycles"


async def test_lost_stretch_of_frames_ends_the_window(tiny_model_dir: Path, redis_url: str) -> None:
    """1 s of frames lost (the RTP clock jumps, as after a burst of packet loss or a
    frozen camera): the window ends there and no scored window spans the gap."""
    settings = settings_for(tiny_model_dir, redis_url, whip_any_stream=True)
    frames = [pattern_frame(i, W, H) for i in range(50)]
    track = ClipTrack(frames, fps=FPS, loop=True)
    async with Service(settings) as svc:
        pub = WhipPublisher(svc.url, "lossy", track, TOKEN)
        assert await pub.start() == 201
        try:
            before = await wait_scores(redis_url, "lossy", 3)
            assert len(before) >= 3
            seen = max(int(s["segment"]) for s in await read_scores(redis_url, "lossy"))
            track.skip(int(FPS))  # 25 frames = 1 s, beyond gap_tolerance_s (0.5 s)
            after = await wait_scores(redis_url, "lossy", 3,
                                      where=lambda s: int(s["segment"]) > seen)
            assert len(after) >= 3
            st, body = await svc.get_json("/streams/lossy", TOKEN)
            assert st == 200 and body["gaps"].get("pts_jump", 0) >= 1, body["gaps"]
        finally:
            await pub.stop()
    scores = await read_scores(redis_url, "lossy")
    for s in scores:
        assert float(s["end_s"]) - float(s["start_s"]) == pytest.approx(2.0, abs=1e-5)
    last_end = max(float(s["end_s"]) for s in scores if int(s["segment"]) <= seen)
    next_start = min(float(s["start_s"]) for s in scores if int(s["segment"]) > seen)
    assert next_start - last_end > 0.5  # the lost second lies between the two windows' runs


async def test_packet_loss_burst_never_lands_inside_a_window(
    tiny_model_dir: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every RTP packet the publisher sends for 1 s is lost on the wire. Whatever the
    receiver recovers (NACK retransmissions, a keyframe after PLI), no scored window
    is built across missing video: the frames of every window are at most
    ``gap_tolerance_s`` apart on the RTP clock, and scoring resumes."""
    rec = FrameRecorder()
    monkeypatch.setattr(webrtc_source, "frame_to_rgb", rec)
    settings = settings_for(tiny_model_dir, redis_url, whip_any_stream=True)
    tolerance = settings.serve.source.gap_tolerance_s
    frames = [pattern_frame(i, W, H) for i in range(50)]
    async with Service(settings) as svc:
        pub = WhipPublisher(svc.url, "lossy2", ClipTrack(frames, fps=FPS, loop=True), TOKEN)
        assert await pub.start() == 201
        assert pub.pc is not None
        transport = pub.pc.getSenders()[0].transport
        real_send = transport._send_rtp
        lose_until = 0.0
        lost = 0

        async def lossy_send(data: bytes) -> None:
            nonlocal lost
            if asyncio.get_running_loop().time() < lose_until:
                lost += 1
                return
            await real_send(data)

        transport._send_rtp = lossy_send
        try:
            before = await wait_scores(redis_url, "lossy2", 3)
            assert len(before) >= 3
            lose_until = asyncio.get_running_loop().time() + 1.0
            await asyncio.sleep(1.0)
            n = len(await read_scores(redis_url, "lossy2"))
            after = await wait_scores(redis_url, "lossy2", n + 12)
            assert len(after) >= n + 12, "scoring did not resume after the loss"
            st, body = await svc.get_json("/streams/lossy2", TOKEN)
            assert st == 200
        finally:
            transport._send_rtp = real_send
            await pub.stop()
    assert lost > 10
    for s in await read_scores(redis_url, "lossy2"):
        pts, _ = window_frames(rec, float(s["start_s"]))
        steps = np.diff(pts)
        assert steps.min() >= 0 and steps.max() <= tolerance, (s, pts, body["gaps"])
    sampled = np.diff(sorted(rec.frames))
    if sampled.max() > tolerance:  # frames were really lost: the window ended there
        assert sum(body["gaps"].values()) >= 1, body["gaps"]
    print(f"\nlost {lost} RTP packets; longest hole between sampled frames "
          f"{sampled.max():.2f} s; gaps {body['gaps']}")


async def test_a_publishers_delete_is_a_normal_end_not_an_error(
    tiny_model_dir: Path, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A publisher that ends its session with DELETE: the declared stream waits for the
    next one with no error on its status and no WARNING logged for it."""
    settings = settings_for(tiny_model_dir, redis_url,
                            streams=[{"id": "cam1", "url": "whip://cam1"}])
    frames = [pattern_frame(i, W, H) for i in range(40)]
    async with Service(settings) as svc:
        pub = WhipPublisher(svc.url, "cam1", ClipTrack(frames, loop=True), TOKEN)
        assert await pub.start() == 201
        try:
            assert len(await wait_scores(redis_url, "cam1", 1)) >= 1
        finally:
            caplog.clear()
            with caplog.at_level("INFO"):
                assert await pub.stop() == 200
                body: Any = None
                for _ in range(300):
                    _, body = await svc.get_json("/streams/cam1", TOKEN)
                    if body["reconnects"] >= 1:  # back to waiting for a publisher
                        break
                    await asyncio.sleep(0.1)
    assert body["reconnects"] >= 1 and body["error"] is None, body
    assert body["state"] in ("starting", "reconnecting"), body
    warnings = [r.getMessage() for r in caplog.records
                if r.levelname == "WARNING" and "cam1" in r.getMessage()]
    assert not warnings, warnings
    ended = [r.getMessage() for r in caplog.records if "publisher ended its session" in
             r.getMessage()]
    assert ended and all(r.levelname == "INFO" for r in caplog.records
                         if "publisher ended its session" in r.getMessage()), ended


async def test_a_second_serve_on_the_same_redis_without_cluster_mode_is_refused(
    tiny_model_dir: Path, redis_url: str
) -> None:
    """Two serve processes on one Redis without serve.cluster.enabled would both score
    every stream: the second is refused in one line naming the first; once the first
    has drained, a successor starts at once."""
    from monitor.errors import ConfigError
    from workers.serve_cmd import serve

    first = settings_for(tiny_model_dir, redis_url)
    first = first.model_copy(update={"serve": first.serve.model_copy(update={
        "cluster": first.serve.cluster.model_copy(update={"replica": "serve-a"})})})
    async with Service(first):
        with pytest.raises(ConfigError) as info:
            # bounded: a second serve that is not refused runs until this gives up
            await asyncio.wait_for(serve(settings_for(tiny_model_dir, redis_url)), 60)
    message = info.value.message
    assert "another restrav serve (serve-a)" in message and "serve.cluster" in message
    assert "\n" not in message
    async with Service(settings_for(tiny_model_dir, redis_url)) as svc:
        assert (await svc.get_json("/healthz"))[0] == 200
