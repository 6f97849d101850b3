"""Evidence end to end: a real `restrav serve` (the composition of `workers.serve_cmd`,
in this event loop), a classifier that alerts on everything, one file stream, Redis.

The alert's evidence MP4 decodes (ffprobe) to 24 frames whose pixels are the frames the
engine sampled (the source decoded at the sample times, scaled the same way, within
JPEG/H.264 tolerance), the contact sheet is an image, the JSON record holds the score
Redis holds, and the alert event in ``restrav:events`` names the record."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import redis
from aiohttp import ClientSession

from monitor.config import load_settings
from monitor.core.classifier import Classifier, Scaler
from monitor.live.evidence.writer import CLIP, RECORD, SHEET
from monitor.media.stills import decode_jpeg
from tests.media import ffprobe_h264_frames, pattern_frame, write_clip
from tests.webrtc_peers import Service, free_port, metric_value

TOKEN = "evidence-token"
WIDTH = 64


def always_alerts(out: Path) -> Path:
    """A mean-curvature classifier centred far below any curvature: P(AI) = 1."""
    Classifier(
        kind="mean_curvature", scaler=Scaler.identity(),
        params={"centre": np.array([-1000.0]), "scale": np.array([1.0])},
        threshold=0.5, threshold_mode="fixed",
    ).save(out)
    return out


def coded_frame(i: int, width: int, height: int) -> np.ndarray:
    """The jitter pattern under a top half that spells ``i`` in eight black or white
    bars: any two frames differ by whole bars, far beyond compression noise."""
    img = pattern_frame(i, width, height, "jitter")
    for b in range(8):
        img[: height // 2, b * width // 8 : (b + 1) * width // 8] = 255 if (i >> b) & 1 else 0
    return img


def source_frames(clip: Path) -> list[tuple[float, np.ndarray]]:
    """Every frame of ``clip`` with its time, scaled as evidence frames are."""
    out = []
    with av.open(str(clip)) as c:
        st = c.streams.video[0]
        for f in c.decode(st):
            assert f.pts is not None
            h = round(f.height * WIDTH / f.width / 2) * 2
            out.append((float(f.pts * st.time_base),
                        f.reformat(width=WIDTH, height=h, format="rgb24").to_ndarray()))
    return out


def mp4_frames(clip: Path) -> list[np.ndarray]:
    with av.open(str(clip)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def shown_at(frames: list[tuple[float, np.ndarray]], t: float) -> int:
    """The index of the frame on screen at ``t``: the last one whose time is <= t."""
    return max(i for i, (pts, _) in enumerate(frames) if pts <= t + 1e-6)


def settings_for(tmp: Path, model_dir: Path, redis_url: str, clip: Path, **evidence: Any
                 ) -> Any:
    return load_settings(None, **{
        "model": {"ref": str(model_dir), "device": "cpu", "image_size": 112, "batch_size": 8},
        "classifier": {"path": str(always_alerts(tmp / "clf"))},
        "redis": {"url": redis_url},
        "serve": {
            "api": {"port": free_port(), "token": TOKEN},
            "streams": [{"id": "cam", "url": f"file://{clip}"}],
            "persist_streams": False,
            "sinks": {"stdout": False},
            "engine": {"hop": 4, "max_batch": 8, "max_wait_ms": 5.0},
            "alerts": {"enter": 0.8, "leave": 0.6, "min_duration_s": 0.5},
            "ui": {"enabled": False},
            "evidence": {"dir": str(tmp / "evidence"), "frame_width": WIDTH, **evidence},
        },
    })


async def wait_for(cond: Any, timeout_s: float, what: str) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        value = await asyncio.to_thread(cond)
        if value:
            return value
        await asyncio.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


@pytest.mark.slow
async def test_an_alert_keeps_the_frames_the_engine_scored(
    tiny_model_dir: Path, redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clip = tmp_path / "jerky.mp4"
    write_clip(clip, fps=25, n_frames=150, size=(128, 96), frame_fn=coded_frame)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    settings = settings_for(tmp_path, tiny_model_dir, redis_url, clip)
    async with Service(settings) as svc:
        def started() -> dict[str, str] | None:
            for _, ev in r.xrange("restrav:events"):
                if ev["kind"] == "alert_start":
                    return ev
            return None

        event = await wait_for(started, 120, "an alert_start in restrav:events")
        rid = event["evidence"]
        folder = tmp_path / "evidence" / rid
        await wait_for(lambda: (folder / RECORD).is_file(), 60, f"the record {rid}")
        metrics = await svc.metrics_text()
        served = await fetch_review(svc, rid)
        async with ClientSession() as http, http.post(
                f"{svc.url}/evidence/{rid}/ack", headers={"Authorization": f"Bearer {TOKEN}"}
        ) as resp:
            assert resp.status == 200, await resp.text()
            assert (await resp.json())["by"] == "operator"

        def acknowledged() -> list[dict[str, str]]:
            return [ev for _, ev in r.xrange("restrav:events") if ev["kind"] == "acknowledged"]

        acks = await wait_for(acknowledged, 30, "the acknowledgement in restrav:events")
    assert svc.rc == 0
    assert len(acks) == 1 and acks[0]["evidence"] == rid and acks[0]["stream"] == "cam"
    assert acks[0]["by"] == "operator" and TOKEN not in str(acks)
    assert TOKEN not in caplog.text
    assert sorted(p.name for p in folder.iterdir()) == sorted([CLIP, SHEET, RECORD])
    assert not any(p.name.startswith(".tmp-") for p in folder.parent.iterdir())
    assert metric_value(metrics, "restrav_evidence_records_total") is not None

    rec = json.loads((folder / RECORD).read_text())
    assert rec["id"] == rid and rec["stream"] == "cam" and rec["reason"] == "alert_start"
    assert rec["classifier"] == "clf" and rec["replica"] and len(rec["feature_names"]) == 21
    # the record's score is the one Redis holds for that window
    seq = rec["score"]["seq"]
    stored = [f for _, f in r.xrange("restrav:{cam}:scores") if f["seq"] == str(seq)]
    assert len(stored) == 1
    assert json.loads(stored[0]["features"]) == rec["score"]["features"]
    for key in ("p_ai", "start_s", "end_s", "segment", "zero_steps", "wall_end"):
        assert float(stored[0][key]) == pytest.approx(float(rec["score"][key])), key
    assert float(event["p_ai"]) == pytest.approx(rec["score"]["p_ai"]) and rec["score"][
        "p_ai"] >= 0.8
    times = [f["time_s"] for f in rec["frames"]]
    assert len(times) == 24 and times[0] == pytest.approx(rec["score"]["start_s"])
    assert times[-1] == pytest.approx(rec["score"]["end_s"])

    # the clip: 24 frames, each the source frame on screen at its sample time
    assert ffprobe_h264_frames(folder / CLIP) == 24
    got = mp4_frames(folder / CLIP)
    src = source_frames(clip)
    assert got[0].shape == src[0][1].shape == (48, 64, 3)
    for t, frame in zip(times, got):
        want = shown_at(src, t)
        diffs = [np.abs(frame.astype(int) - s.astype(int)).mean() for _, s in src]
        # within JPEG/H.264 tolerance, and far from every other frame of the source
        assert diffs[want] < 8, (t, diffs[want])
        assert min(d for i, d in enumerate(diffs) if i != want) > diffs[want] + 5, t
    sheet = decode_jpeg((folder / SHEET).read_bytes())
    assert sheet.shape[1] == 6 * 64 and sheet.shape[0] >= 4 * 48

    # the control API served the same record and files, never to be cached
    body, clip_bytes, sheet_bytes, thumb = served
    assert body == {**rec, "urls": {"clip": f"/evidence/{rid}/{CLIP}",
                                    "sheet": f"/evidence/{rid}/{SHEET}"}}
    assert clip_bytes == (folder / CLIP).read_bytes()
    assert sheet_bytes == (folder / SHEET).read_bytes()
    assert decode_jpeg(thumb).shape == (48, 64, 3)


async def until_stopped(svc: Service, poll_s: float, each: Any = None) -> dict[str, Any]:
    """The file stream ``cam``'s status once it has ended (bounded: 120 s), calling
    ``each()`` at every poll before that."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    while (st := dict((await svc.get_json("/streams/cam", TOKEN))[1]))["state"] != "stopped":
        assert loop.time() < deadline, "the file stream never ended"
        if each is not None:
            each()
        await asyncio.sleep(poll_s)
    return st


async def fetch_review(svc: Service, rid: str) -> tuple[dict[str, Any], bytes, bytes, bytes]:
    """The record, clip, sheet and thumbnail as the API serves them (checking headers),
    after checking that a missing or wrong token, or a malformed id, gets no image."""
    good = {"Authorization": f"Bearer {TOKEN}"}
    out: list[Any] = []
    async with ClientSession() as http:
        for path, ctype in ((f"/evidence/{rid}", "application/json"),
                            (f"/evidence/{rid}/{CLIP}", "video/mp4"),
                            (f"/evidence/{rid}/{SHEET}", "image/jpeg"),
                            ("/streams/cam/thumbnail", "image/jpeg")):
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                async with http.get(svc.url + path, headers=headers) as r:
                    assert r.status == 401 and r.content_type == "application/json", path
                    assert r.headers["Cache-Control"] == "no-store"
            async with http.get(svc.url + path, headers=good) as r:
                assert r.status == 200 and r.content_type == ctype, (path, r.status)
                assert r.headers["Cache-Control"] == "no-store"
                out.append(await r.json() if ctype == "application/json" else await r.read())
        for path in ("/evidence/..%2F..%2Fetc", f"/evidence/{rid[:-1]}9999/{CLIP}",
                     "/evidence/1234", "/streams/nope/thumbnail"):
            async with http.get(svc.url + path, headers=good) as r:
                assert r.status == 404, path
    return out[0], out[1], out[2], out[3]


@pytest.mark.slow
async def test_an_unwritable_evidence_folder_costs_evidence_never_scores(
    tiny_model_dir: Path, redis_url: str, tmp_path: Path
) -> None:
    clip = tmp_path / "jerky.mp4"
    write_clip(clip, fps=25, n_frames=100, size=(128, 96), frame_fn=coded_frame)
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    (tmp_path / "blocker").write_text("a file where the evidence folder's parent should be")
    settings = settings_for(tmp_path, tiny_model_dir, redis_url, clip, low_threshold=0.0,
                            dir=str(tmp_path / "blocker" / "evidence"))
    async with Service(settings) as svc:
        st = await until_stopped(svc, 0.3)
        await wait_for(lambda: r.xlen("restrav:{cam}:scores") == st["windows_scored"],
                       60, "every score in Redis")
        metrics = await svc.metrics_text()
    assert svc.rc == 0
    # every window of the file was scored: none skipped, no sample dropped
    windows = int(st["windows_scored"])
    assert windows == (int(st["samples"]) - 24) // 4 + 1 > 5, st
    assert st["frames_dropped"] == st["windows_skipped"] == 0
    dropped = {reason: metric_value(metrics, "restrav_evidence_records_dropped_total",
                                    reason=reason) or 0.0
               for reason in ("write_error", "frames_missing", "queue_full")}
    # every window asked for evidence (low threshold 0): each was dropped and counted
    assert sum(dropped.values()) == windows and dropped["write_error"] >= windows - 2, dropped
    assert not metric_value(metrics, "restrav_evidence_records_total")
    # the alert still went out, naming a record that was never written
    starts = [ev for _, ev in r.xrange("restrav:events") if ev["kind"] == "alert_start"]
    assert len(starts) == 1 and starts[0]["evidence"]


@pytest.mark.slow
async def test_many_records_under_a_small_bound_keep_the_newest(
    tiny_model_dir: Path, redis_url: str, tmp_path: Path
) -> None:
    clip = tmp_path / "jerky.mp4"
    write_clip(clip, fps=25, n_frames=150, size=(128, 96), frame_fn=coded_frame)
    bound = 3 * 60 * 1024  # a few records (each about 40-60 KiB here)
    settings = settings_for(tmp_path, tiny_model_dir, redis_url, clip, low_threshold=0.0,
                            max_disk_bytes=bound)
    folder = tmp_path / "evidence"
    seen: set[str] = set()
    async with Service(settings) as svc:
        def on_disk() -> None:  # what is on disk at any moment stays under the bound
            nonlocal seen
            if folder.is_dir():
                names = {p.name for p in folder.iterdir() if not p.name.startswith(".")}
                seen |= names
                size = sum(f.stat().st_size for n in names for f in (folder / n).glob("*"))
                assert size <= bound + 64 * 1024, size  # + one record being renamed in

        st = await until_stopped(svc, 0.2, on_disk)
        metrics = await svc.metrics_text()
    assert svc.rc == 0
    written = metric_value(metrics, "restrav_evidence_records_total") or 0
    deleted = metric_value(metrics, "restrav_evidence_records_deleted_total", reason="size")
    left = sorted(p.name for p in folder.iterdir())
    assert written >= 6 and deleted == written - len(left), (written, deleted, left)
    assert sum(f.stat().st_size for n in left for f in (folder / n).glob("*")) <= bound
    # the oldest went first: every record left is newer than every one deleted
    gone = seen - set(left)
    assert gone and max(gone) < min(left)
    # scoring went on: every window of the file scored, none skipped, no sample dropped
    assert st["windows_scored"] == (int(st["samples"]) - 24) // 4 + 1
    assert st["frames_dropped"] == st["windows_skipped"] == 0
