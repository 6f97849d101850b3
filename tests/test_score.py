"""The whole path: real clips -> features and P(AI) -> `restrav score` JSON, and bad input."""

from __future__ import annotations

import bisect
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from monitor.core.embed import Embedder
from monitor.core.geometry import window_features
from monitor.core.pipeline import score_file
from monitor.learn.fitting import fit_classifier
from monitor.media.decode_file import probe, sample_file
from monitor.media.sampler import centre_window_start, grid_times, window_times
from monitor.types import FEATURE_NAMES, WINDOW_SAMPLES, Sample
from tests.conftest import TINY_HIDDEN
from tests.media import decoded_pts, write_clip

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def expected_repeats(path: Path) -> int:
    info = probe(path)
    pts = decoded_pts(path)
    idx = [
        max(0, bisect.bisect_right(pts, info.origin_s + t + 1e-9) - 1)
        for t in window_times(centre_window_start(info.duration_s))
    ]
    return sum(1 for a, b in itertools.pairwise(idx) if a == b)


def assert_scored(path: Path, embedder: Embedder, fps: float, size: tuple[int, int]) -> None:
    """One clip through score_file: finite features, the repeats the decoded times
    predict, a source below the 11.5 Hz sample rate flagged, the displayed size."""
    result = score_file(path, embedder)
    assert embedder.embedding_dim == 257 * TINY_HIDDEN
    w = result.centre.window
    assert w.features.shape == (21,) and np.isfinite(w.features).all(), path.name
    assert result.centre.repeated_samples == expected_repeats(path), path.name
    assert w.repeated_frames >= result.centre.repeated_samples  # zero steps include repeats
    if fps < 11.5:
        assert result.centre.repeated_samples > 0 and result.centre.flagged, path.name
    assert (result.info.width, result.info.height) == size, path.name


def test_every_shared_clip(shared_clips: Path, tiny_embedder: Embedder) -> None:
    manifest = json.loads((shared_clips / "manifest.json").read_text())
    assert len(manifest) == 16
    for entry in manifest:
        assert_scored(shared_clips / entry["file"], tiny_embedder, entry["fps"],
                      (entry["width"], entry["height"]))
    assert sum(e["fps"] < 11.5 for e in manifest) >= 4  # the 6 and 8 fps clips


def rotated(path: Path, degrees: int) -> Path:
    out = path.with_name(f"rot{degrees}-{path.name}")
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(path), "-c", "copy",
                    "-metadata:s:v:0", f"rotate={degrees}", str(out)], check=True, timeout=60)
    return out


VFR_GAPS = np.random.default_rng(7).choice([1 / 60, 1 / 30, 1 / 15, 0.2], size=60)
MADE_CLIPS: dict[str, tuple[str, float, dict[str, object]]] = {
    # name: (file, fps for the flag, write_clip arguments): the shared clips' oddities
    "6fps": ("six.mp4", 6.0, {"fps": 6.0, "n_frames": 30}),
    "8fps-odd-size": ("eight.mp4", 8.0, {"fps": 8.0, "n_frames": 40, "size": (178, 100)}),
    "10fps-gif": ("ten.gif", 10.0, {"fps": 10.0, "n_frames": 30, "codec": "gif"}),
    "non-zero-start": ("late.mp4", 30.0, {"pts_s": [3.5 + i / 30 for i in range(90)]}),
    "vfr": ("vfr.mkv", 30.0, {"pts_s": np.concatenate([[0.0], np.cumsum(VFR_GAPS)[:-1]])
                              .round(4).tolist()}),
    "mpeg4-in-mp4": ("part2.mp4", 25.0, {"fps": 25.0, "n_frames": 75, "codec": "mpeg4"}),
    "shorter-than-2s": ("short.mp4", 30.0, {"fps": 30.0, "n_frames": 45}),
    "exactly-2s": ("two.mp4", 25.0, {"fps": 25.0, "n_frames": 50}),
    "portrait-rotated": ("rot.mp4", 25.0, {"fps": 25.0, "n_frames": 75}),
}


@pytest.mark.parametrize("name", list(MADE_CLIPS))
def test_every_made_clip(name: str, tmp_path: Path, tiny_embedder: Embedder) -> None:
    """test_every_shared_clip's checks on clips made here with the shared clips' oddities
    (frame rates below 11.5 Hz, GIF, an odd size, a first timestamp not zero, variable
    frame rate, MPEG-4 Part 2, 1.5 s and exactly 2 s, rotation to portrait): run everywhere."""
    file, fps, kwargs = MADE_CLIPS[name]
    path = tmp_path / file
    write_clip(path, **kwargs)  # type: ignore[arg-type]
    size = kwargs.get("size", (64, 48))
    assert isinstance(size, tuple)
    if name == "portrait-rotated":
        path, size = rotated(path, 90), (size[1], size[0])
    if name == "vfr":
        assert len({round(b - a, 3) for a, b in itertools.pairwise(decoded_pts(path))}) >= 3
    assert_scored(path, tiny_embedder, fps, size)


def test_all_windows_equal_batch_features_on_the_same_frames(
    tmp_path: Path, tiny_embedder: Embedder
) -> None:
    path = tmp_path / "walk.mp4"
    write_clip(path, fps=25.0, n_frames=100, motion="jitter")  # 4 s: 24+ windows
    result = score_file(path, tiny_embedder, all_windows=True, hop=1)
    info = probe(path)
    samples: list[Sample] = []
    sample_file(path, {"g": grid_times(info.duration_s)}, lambda _n, s: samples.append(s))
    z = tiny_embedder.embed([s.frame.rgb for s in samples]).astype(np.float64)
    assert result.windows is not None
    assert len(result.windows) == len(samples) - WINDOW_SAMPLES + 1
    for k, win in enumerate(result.windows):
        want = window_features(z[k : k + WINDOW_SAMPLES])
        np.testing.assert_allclose(win.window.features, want.features, rtol=1e-5, atol=1e-4)
        assert win.window.start_s == pytest.approx(samples[k].time_s)
    hop3 = score_file(path, tiny_embedder, all_windows=True, hop=3)
    assert hop3.windows is not None
    assert [w.window.start_s for w in hop3.windows] == [
        w.window.start_s for w in result.windows[::3]
    ]
    # every distinct frame embedded once, not once per window
    assert result.frames_embedded <= len({s.frame.index for s in samples}) + WINDOW_SAMPLES


def make_bad_inputs(d: Path) -> dict[str, tuple[Path, str]]:
    """Each bad input and the error code it must get."""
    empty = d / "empty.mp4"
    empty.write_bytes(b"")
    noise = d / "noise.mp4"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    full = d / "full.mp4"
    write_clip(full, fps=30, n_frames=60)
    truncated = d / "truncated.mp4"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    audio = d / "audio.wav"
    with av.open(str(audio), "w") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 8000), dtype=np.int16), format="s16", layout="mono"
        )
        frame.sample_rate = 8000
        for p in s.encode(frame):
            c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    still = d / "still.png"
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(still)
    return {
        "empty": (empty, "empty"),
        "noise": (noise, "decode_error"),
        "truncated": (truncated, "decode_error"),
        "audio": (audio, "no_video_stream"),
        "still": (still, "too_short"),
        "missing": (d / "missing.mp4", "not_found"),
        "directory": (d, "not_a_file"),
    }


def test_cli_scores_good_files_and_reports_each_bad_one(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    bad = make_bad_inputs(tmp_path)
    good = tmp_path / "good.mp4"
    write_clip(good, fps=30, n_frames=90)
    good2 = tmp_path / "good2.mkv"
    write_clip(good2, fps=24, n_frames=72, motion="jitter")
    x = np.random.default_rng(0).normal(size=(60, 21))
    clf_dir = tmp_path / "clf"
    fit_classifier(x, np.arange(60) % 2, kind="logreg").save(clf_dir)
    args = [str(good), *(str(p) for p, _ in bad.values()), str(good2)]
    proc = run_cli(
        "score",
        "--model",
        str(tiny_model_dir),
        "--device",
        "cpu",
        "--classifier",
        str(clf_dir),
        *args,
    )
    assert proc.returncode == 1, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [line["path"] for line in lines] == args  # one object per file, in order
    by_path = {line["path"]: line for line in lines}
    for name, (path, code) in bad.items():
        obj = by_path[str(path)]
        assert obj["ok"] is False, name
        assert obj["error"]["code"] == code, (name, obj)
        assert str(path) in obj["error"]["message"]
    for g in (good, good2):
        obj = by_path[str(g)]
        assert obj["ok"] is True
        assert list(obj["window"]["features"]) == list(FEATURE_NAMES)
        assert 0.0 <= obj["window"]["score"] <= 1.0
        assert obj["window"]["is_ai"] in (True, False)
        assert obj["window"]["repeated_frames"] == 0


def test_cli_windows_output_and_exit_zero(tmp_path: Path, tiny_model_dir: Path) -> None:
    clip = tmp_path / "c.mp4"
    write_clip(clip, fps=30, n_frames=105)
    proc = run_cli("score", "-m", str(tiny_model_dir), "-c", "none", "--windows", "--hop", "4",
                   str(clip))
    assert proc.returncode == 0, proc.stderr
    obj = json.loads(proc.stdout)
    assert obj["window"]["score"] is None  # no classifier: features only
    starts = [w["start_s"] for w in obj["windows"]]
    assert len(starts) >= 3
    np.testing.assert_allclose(np.diff(starts), 4 * 2 / 23, atol=1e-6)


def test_cli_help_and_config_errors(tmp_path: Path) -> None:
    proc = run_cli("score", "--help")
    assert proc.returncode == 0 and "--windows" in proc.stdout and "repeated" in proc.stdout
    proc = run_cli("score", "-m", str(tmp_path / "nope"), "x.mp4")
    assert proc.returncode == 3
    assert "no such file" in proc.stderr and "Traceback" not in proc.stderr


def test_doctor_reports_versions_and_unreachable_redis(tiny_model_dir: Path) -> None:
    proc = run_cli(
        "doctor",
        "--json",
        "-m",
        str(tiny_model_dir),
        "--redis-url",
        "redis://user:hunter2@127.0.0.1:1/0",
    )
    report = json.loads(proc.stdout)
    assert report["versions"]["torch"] and report["versions"]["av"]
    assert report["model"]["kind"] == "transformers directory"
    assert report["redis"]["reachable"] is False
    assert "hunter2" not in proc.stdout
    assert proc.returncode == 1


def test_doctor_with_reachable_redis(tiny_model_dir: Path, redis_url: str) -> None:
    proc = run_cli("doctor", "--json", "-m", str(tiny_model_dir), "--redis-url", redis_url)
    assert proc.returncode == 0, proc.stdout
    assert json.loads(proc.stdout)["redis"]["reachable"] is True
