"""A publisher we did not write: GStreamer 1.22's webrtcbin (system python3 + gi) posts
its normal ``a=setup:actpass`` offer to ``restrav serve``'s WHIP endpoint; DTLS connects
(we answer ``setup:passive``: aiortc's DTLS server takes GStreamer's RSA client
certificate) and windows are scored."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_webrtc_service import TOKEN, settings_for, wait_scores
from tests.webrtc_peers import Service, metric_value

SCRIPT = Path(__file__).parent / "peers" / "gst_whip_publish.py"
SYSTEM_PYTHON = "/usr/bin/python3"


def _gst_ready() -> str | None:
    """Why the GStreamer publisher cannot run here, or None."""
    if shutil.which(SYSTEM_PYTHON) is None:
        return "no system python3"
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('Gst', '1.0'); "
         "gi.require_version('GstWebRTC', '1.0'); from gi.repository import Gst; Gst.init(None);"
         "assert Gst.ElementFactory.find('webrtcbin') and Gst.ElementFactory.find('nicesrc')"],
        capture_output=True, text=True, timeout=60, check=False)
    return None if probe.returncode == 0 else (
        "GStreamer webrtcbin not installed (apt-get install python3-gi "
        "gir1.2-gst-plugins-bad-1.0 gstreamer1.0-plugins-bad gstreamer1.0-nice; CI has them)"
    )


async def run_publisher(url: str, seconds: float, *args: str) -> asyncio.subprocess.Process:
    """Start the GStreamer publisher script (stdout+stderr piped)."""
    return await asyncio.create_subprocess_exec(
        SYSTEM_PYTHON, str(SCRIPT), url, TOKEN, str(seconds), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)


@pytest.mark.parametrize("codec", ["vp8", "h264"])
async def test_gstreamer_webrtcbin_publishes_over_whip_and_is_scored(
    tiny_model_dir: Path, redis_url: str, codec: str
) -> None:
    why = _gst_ready()
    if why is not None:
        pytest.skip(why)
    settings = settings_for(tiny_model_dir, redis_url,
                            streams=[{"id": "gst", "url": "whip://gst"}])
    async with Service(settings) as svc:
        proc = await run_publisher(f"{svc.url}/whip/gst", 60, "--codec", codec)
        try:
            scores = await wait_scores(redis_url, "gst", 3, timeout_s=90)
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
        log = out.decode(errors="replace")
        assert "status 201" in log, log
        assert "dtls connected" in log, log
        assert len(scores) >= 3, log
        assert all(0.0 <= float(s["p_ai"]) <= 1.0 for s in scores if s.get("p_ai"))
        text = await svc.metrics_text()
        assert (metric_value(text, "restrav_stream_windows_scored_total", stream="gst")
                or 0) >= 3


async def test_a_failed_dtls_handshake_is_logged_with_its_states(
    tiny_model_dir: Path, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An offer that forces aiortc to be the DTLS client (``a=setup:passive``) with an RSA
    certificate peer fails; the session's end says why, in one line."""
    why = _gst_ready()
    if why is not None:
        pytest.skip(why)
    caplog.set_level(logging.INFO, logger="monitor.whip")
    settings = settings_for(tiny_model_dir, redis_url,
                            streams=[{"id": "gst", "url": "whip://gst"}])
    async with Service(settings) as svc:
        proc = await run_publisher(f"{svc.url}/whip/gst", 6, "--setup", "passive")
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        lines: list[str] = []
        for _ in range(300):
            lines = [r.getMessage() for r in caplog.records
                     if "ended" in r.getMessage() and "WHIP gst" in r.getMessage()]
            if lines:
                break
            await asyncio.sleep(0.1)
    assert proc.returncode == 2, out.decode(errors="replace")  # never connected
    assert len(lines) == 1, lines
    assert "before any video" in lines[0] and "DTLS failed" in lines[0], lines[0]
    assert "ICE completed" in lines[0] or "ICE connected" in lines[0], lines[0]
