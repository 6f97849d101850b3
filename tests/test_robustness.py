"""Robustness runs on real encoded clips: ffmpeg transformations, feature and score drift."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from monitor.core.backbone import load_backbone
from monitor.core.embed import Embedder
from monitor.core.pipeline import score_file
from monitor.learn.fitting import fit_classifier
from monitor.learn.robustness import (
    robustness_markdown,
    robustness_report,
    run_robustness,
    transform_clip,
)

from .media import decoded_pts, write_clip
from .tables import synthetic_table

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 112


@pytest.fixture(scope="module")
def small_embedder(tiny_model_dir: Path) -> Embedder:
    return Embedder(load_backbone(str(tiny_model_dir), "cpu", image_size=IMAGE_SIZE), batch_size=4)


def test_transformations_do_what_they_say(tmp_path: Path) -> None:
    import av

    src = tmp_path / "src.mp4"
    write_clip(src, fps=24, n_frames=48, size=(64, 48))
    for name, check in (
        ("downscale_half", lambda s: (s.codec_context.width, s.codec_context.height) == (32, 24)),
        ("fps_10", lambda s: abs(float(s.average_rate) - 10) < 0.01),
        ("h264_crf35", lambda s: s.codec_context.pix_fmt == "yuv420p"),
    ):
        dst = tmp_path / f"{name}.mp4"
        transform_clip(src, dst, name)
        with av.open(str(dst)) as c:
            assert check(c.streams.video[0]), name
    assert len(decoded_pts(tmp_path / "fps_10.mp4")) == pytest.approx(20, abs=1)


def test_robustness_report_measures_drift(small_embedder: Embedder, tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    write_clip(clip, fps=24, n_frames=62, motion="jitter")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    table = synthetic_table()
    clf = fit_classifier(table.features, table.labels, kind="mean_curvature")
    outcomes = run_robustness(
        [clip, broken],
        lambda p: score_file(p, small_embedder, clf),
        ["lossless", "h264_crf35", "downscale_half", "fps_10", "blend_3"],
    )
    assert len(outcomes) == 2 * 6
    report = robustness_report(outcomes, clf.threshold)
    rows = {r["transform"]: r for r in report["transforms"]}
    assert set(rows) == {"lossless", "h264_crf35", "downscale_half", "fps_10", "blend_3"}
    assert all(r["clips"] == 1 and r["failed"] == 1 for r in rows.values())
    # the lossless control leaves the frames, hence the features, unchanged
    assert rows["lossless"]["mean_abs_delta_theta_mean_deg"] < 1e-3
    assert rows["lossless"]["mean_abs_delta_score"] < 1e-4
    for name in ("h264_crf35", "downscale_half", "blend_3"):
        assert rows[name]["mean_rel_delta_features"] > 10 * rows["lossless"][
            "mean_rel_delta_features"] + 1e-6, name
    # below 11.5 fps the window repeats frames and is flagged
    assert rows["fps_10"]["flagged"] == 1 and rows["lossless"]["flagged"] == 0
    assert 0.0 <= rows["blend_3"]["decision_flip_rate"] <= 1.0
    md = robustness_markdown(report)
    assert "| lossless | 1 | 1 |" in md and "blend_3" in md
    errors = [p for p in report["per_clip"] if p["error"]]
    assert len(errors) == 6 and all(str(broken) == e["clip"] for e in errors)


def test_robustness_cli(tiny_model_dir: Path, tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    write_clip(clip, fps=24, n_frames=50)
    config = tmp_path / "settings.yaml"
    config.write_text(f"model:\n  image_size: {IMAGE_SIZE}\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    r = subprocess.run(
        [sys.executable, "-m", "workers.cli", "robustness", str(clip), "--out",
         str(tmp_path / "rob"), "--transforms", "lossless", "fps_15", "--config", str(config),
         "--model", str(tiny_model_dir), "--device", "cpu", "--classifier", "none"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "rob" / "robustness.json").read_text())
    assert [t["transform"] for t in report["transforms"]] == ["lossless", "fps_15"]
    assert report["threshold"] is None  # no classifier: features only
    assert (tmp_path / "rob" / "robustness.md").read_text().startswith("# ReStraV robustness")


@pytest.mark.parametrize("codec", ["mpeg4", "gif"])
def test_lossless_control_is_pixel_exact(codec: str, tmp_path: Path) -> None:
    """The control re-encodes without changing a pixel or a timestamp (yuv420p and
    palette sources alike), so whatever it moves is container noise."""
    import av
    import numpy as np

    src = tmp_path / ("src.avi" if codec == "mpeg4" else "src.gif")
    if codec == "gif":
        with av.open(str(src), "w") as c:
            s = c.add_stream("gif", rate=10)
            s.width, s.height, s.pix_fmt = 64, 48, "rgb8"
            for i in range(12):
                img = np.zeros((48, 64, 3), np.uint8)
                img[:, (i * 5) % 64 :] = (224, 32, 96)
                for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(pkt)
            for pkt in s.encode(None):
                c.mux(pkt)
    else:
        write_clip(src, fps=25, n_frames=30, codec="mpeg4", time_base=Fraction(1, 25))
    dst = tmp_path / "lossless.mp4"
    transform_clip(src, dst, "lossless")

    def frames(p: Path) -> list[tuple[float, np.ndarray]]:
        with av.open(str(p)) as c:
            return [(float(f.pts * f.time_base), f.to_ndarray(format="rgb24"))
                    for f in c.decode(video=0)]

    a, b = frames(src), frames(dst)
    assert len(a) == len(b)
    for (ta, fa), (tb, fb) in zip(a, b):
        assert np.array_equal(fa, fb)
        assert tb - b[0][0] == pytest.approx(ta - a[0][0], abs=1e-3)
