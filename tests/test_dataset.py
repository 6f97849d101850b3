"""Clip discovery (folders, CSV), feature extraction to Parquet, resumability and
failure listing, on real encoded clips and the tiny random backbone."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from monitor.core.pipeline import ClipResult, score_file
from monitor.errors import ConfigError
from monitor.learn.dataset import extract_features, load_table, read_errors
from monitor.learn.discovery import ClipSpec, discover
from monitor.types import FEATURE_NAMES

from .media import write_clip


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clips")
    for sub, motion, n in (("real/cam1", "linear", 2), ("real", "linear", 1),
                           ("ai/genx", "jitter", 2)):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            write_clip(root / sub / f"{motion}{i}.mp4", fps=24, n_frames=60, motion=motion)
    (root / "real" / "notes.txt").write_text("not a video")
    (root / "real" / "broken.mp4").write_bytes(b"\x00\x01 definitely not a video")
    return root


def test_discover_folder_layout(clip_folder: Path) -> None:
    clips = {c.clip_id: c for c in discover(clip_folder)}
    assert set(clips) == {
        "real/cam1/linear0.mp4", "real/cam1/linear1.mp4", "real/linear0.mp4",
        "real/broken.mp4", "ai/genx/jitter0.mp4", "ai/genx/jitter1.mp4",
    }
    assert clips["real/cam1/linear0.mp4"].group == "real/cam1"
    assert clips["real/linear0.mp4"].group == "real/linear0.mp4"
    assert clips["ai/genx/jitter0.mp4"].label == 1
    assert clips["ai/genx/jitter0.mp4"].generator == "genx"
    assert clips["real/linear0.mp4"].generator == "real"


def test_discover_csv_manifest(tmp_path: Path, clip_folder: Path) -> None:
    csv = tmp_path / "m.csv"
    csv.write_text(
        "path,label,generator,group\n"
        f"{clip_folder}/real/linear0.mp4,real,,siteA\n"
        f"{clip_folder}/ai/genx/jitter0.mp4,ai-generated,genx,\n"
        "rel/clip.mp4,1,,\n"
    )
    clips = discover(csv)
    assert [c.label for c in clips] == [0, 1, 1]
    assert clips[0].group == "siteA" and clips[0].generator == "real"
    assert clips[1].group == clips[1].clip_id
    assert clips[2].path == tmp_path / "rel" / "clip.mp4" and clips[2].generator == "unknown"
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nx.mp4,maybe\n")
    with pytest.raises(ConfigError, match=r"bad\.csv:2: unknown label"):
        discover(bad)
    with pytest.raises(ConfigError, match="path and label"):
        bad.write_text("file,class\nx.mp4,1\n")
        discover(bad)


def test_discover_refuses_unlabelled_layout(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="real/ and ai/"):
        discover(tmp_path)


def test_extract_writes_rows_metadata_and_lists_failures(
    clip_folder: Path, tiny_embedder, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    clips = discover(clip_folder)
    out = tmp_path / "table"
    summary = extract_features(clips, tiny_embedder, out, all_windows=True, hop=4,
                               chunk_clips=2, backbone="tiny")
    assert summary.extracted == 5 and summary.failed == 1
    errors = read_errors(out)
    assert [e["clip_id"] for e in errors] == ["real/broken.mp4"]
    assert errors[0]["code"] == "decode_error"
    table = load_table(out)
    assert table.meta["backbone"] == "tiny" and table.meta["all_windows"] is True
    centre = table.windows("centre")
    assert len(centre) == 5 and set(centre.clip_ids()) == {c.clip_id for c in clips} - {
        "real/broken.mp4"}
    assert np.all(centre.col("fps") == 24.0) and np.all(centre.col("width") == 64)
    assert np.allclose(centre.col("duration_s").astype(float), 2.5, atol=0.05)
    assert set(centre.col("codec")) == {"h264"}
    assert len(table.windows("grid")) > 0
    # the rows are exactly what score_file computes for that clip
    spec = next(c for c in clips if c.clip_id == "ai/genx/jitter0.mp4")
    ref = score_file(spec.path, tiny_embedder, all_windows=True, hop=4)
    row = centre.select(centre.col("clip_id") == spec.clip_id)
    np.testing.assert_allclose(row.features[0], ref.centre.window.features, rtol=1e-6)
    grid = table.windows("grid").select(table.windows("grid").col("clip_id") == spec.clip_id)
    assert len(grid) == len(ref.windows or [])
    assert list(FEATURE_NAMES) == table.meta["columns"][-21:]


def test_extract_resumes_after_interruption(
    clip_folder: Path, tiny_embedder, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    clips = [c for c in discover(clip_folder) if c.clip_id != "real/broken.mp4"]
    out = tmp_path / "table"
    calls: list[str] = []

    def interrupted(spec: ClipSpec) -> ClipResult:
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(spec.clip_id)
        return score_file(spec.path, tiny_embedder)

    with pytest.raises(KeyboardInterrupt):
        extract_features(clips, tiny_embedder, out, chunk_clips=2, score=interrupted)
    assert len(load_table(out)) == 3  # the finished clips were kept, one chunk and a half

    again: list[str] = []

    def counting(spec: ClipSpec) -> ClipResult:
        again.append(spec.clip_id)
        return score_file(spec.path, tiny_embedder)

    summary = extract_features(clips, tiny_embedder, out, chunk_clips=2, score=counting)
    assert summary.skipped == 3 and summary.extracted == 2
    assert not set(again) & set(calls)
    assert sorted(load_table(out).clip_ids()) == sorted(c.clip_id for c in clips)
    # a different backbone may not be appended to the same table
    with pytest.raises(ConfigError, match="backbone"):
        extract_features(clips, tiny_embedder, out, backbone="other")
    with pytest.raises(ConfigError, match="backbone_options"):
        extract_features(clips, tiny_embedder, out, backbone_options={"image_size": 112})


def test_extract_smoke_on_made_clips(
    tiny_embedder, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    """The shared clips' smoke test on clips made like them: a GIF, MPEG-4 Part 2 in an
    AVI (with B-frames) and an H.264 MP4."""
    gif, avi, mp4 = tmp_path / "a.gif", tmp_path / "b.avi", tmp_path / "c.mp4"
    write_clip(gif, fps=10.0, n_frames=30, codec="gif")
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=size=96x64:rate=25", "-t", "3", "-c:v", "mpeg4", "-bf", "2",
                    str(avi)], check=True, timeout=60)
    write_clip(mp4, fps=25.0, n_frames=75)
    csv = tmp_path / "m.csv"
    csv.write_text(f"path,label,generator\n{gif},ai,gifgen\n{avi},ai,avigen\n{mp4},real,\n")
    summary = extract_features(discover(csv), tiny_embedder, tmp_path / "t")
    assert summary.failed == 0 and summary.extracted == 3
    assert set(load_table(tmp_path / "t").col("codec")) == {"gif", "mpeg4", "h264"}


def test_extract_smoke_on_shared_clips(
    shared_clips: Path, tiny_embedder, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    """Real-world containers and codecs (no accuracy claim: far too few clips)."""
    manifest = json.loads((shared_clips / "manifest.json").read_text())
    picks = [m for m in manifest if m["file"].endswith((".gif", ".avi"))][:2]
    picks += [m for m in manifest if m["label"] == "real"][:1]
    csv = tmp_path / "m.csv"
    csv.write_text("path,label,generator\n" + "".join(
        f"{shared_clips / m['file']},{'ai' if m['label'] != 'real' else 'real'},"
        f"{m['file'].split('__')[1] if m['label'] != 'real' else ''}\n" for m in picks))
    summary = extract_features(discover(csv), tiny_embedder, tmp_path / "t")
    assert summary.failed == 0 and summary.extracted == len(picks)
    table = load_table(tmp_path / "t")
    assert set(table.col("codec")) >= {"gif"} or set(table.col("codec")) >= {"mpeg4"}
