"""How far do features and scores move when a clip is re-encoded, resized,
retimed or smoothed? (The paper did not test this; SPEC section 7.)

Each transformation re-encodes a clip with the ``ffmpeg`` command-line tool
(H.264, ``yuv420p`` for the CRF ladder; lossless ``-qp 0`` in the source's own
pixel format, or RGB for palette/RGB sources, for the others so that only the
named change acts), into a temporary folder that is removed afterwards. The
original and every variant are scored with the same backbone and classifier,
and :func:`robustness_report` aggregates per transformation: the mean absolute
change of the mean curvature (degrees), of the mean step distance (relative),
the mean relative change over all 21 features (``|a - b| / max(|a|, |b|)``, so
in [0, 2]), the mean absolute change of P(AI), and the share of clips whose
decision flips. ``lossless`` is the control: what moves there is decode and
container noise, not the transformation.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..core.classifier import THETA_MEAN
from ..core.pipeline import ClipResult
from ..errors import ConfigError, DecodeError, RestravError
from ..types import FEATURE_NAMES, FloatArray

log = logging.getLogger("restrav.robustness")

@dataclass(frozen=True)
class Transform:
    """An ffmpeg video filter (or none) and the encoding: ``crf`` for lossy H.264,
    None for lossless (``-qp 0`` in the source's own pixel format)."""

    vf: str | None
    crf: int | None


TRANSFORMS: dict[str, Transform] = {
    "lossless": Transform(None, None),
    "h264_crf18": Transform(None, 18),
    "h264_crf23": Transform(None, 23),
    "h264_crf28": Transform(None, 28),
    "h264_crf35": Transform(None, 35),
    "downscale_half": Transform("scale=trunc(iw/4)*2:trunc(ih/4)*2:flags=bicubic", None),
    "fps_15": Transform("fps=15", None),
    "fps_10": Transform("fps=10", None),
    "blend_3": Transform("tmix=frames=3", None),
}
"""Transformation name -> what it does. The CRF ladder encodes ``yuv420p`` (what
platforms serve); the others are lossless so that only the named change acts.
``fps_10`` drops below the 11.5 Hz sample rate (its windows are flagged);
``blend_3`` averages each frame with its two neighbours (temporal smoothing)."""

DEFAULT_TRANSFORMS: tuple[str, ...] = tuple(TRANSFORMS)
FFMPEG_TIMEOUT_S = 600.0
_YUV_FORMATS = ("yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p")


def _tool(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        raise ConfigError(f"robustness runs need the {name} command (apt-get install ffmpeg)")
    return exe


def _source_pix_fmt(src: Path, timeout_s: float) -> str:
    cmd = [_tool("ffprobe"), "-v", "error", "-select_streams", "v:0", "-show_entries",
           "stream=pix_fmt", "-of", "csv=p=0", str(src)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise DecodeError(f"{src}: ffprobe took longer than {timeout_s:.0f} s") from exc
    if proc.returncode != 0:
        raise DecodeError(f"{src}: ffprobe failed: {proc.stderr.strip()[-300:]}")
    return proc.stdout.strip()


def _encoding(t: Transform, src: Path, timeout_s: float) -> list[str]:
    if t.crf is not None:
        return ["-c:v", "libx264", "-crf", str(t.crf), "-preset", "veryfast",
                "-pix_fmt", "yuv420p"]
    pix = _source_pix_fmt(src, timeout_s)
    if pix in _YUV_FORMATS:  # lossless in the source's own format: no conversion at all
        return ["-c:v", "libx264", "-qp", "0", "-preset", "ultrafast", "-pix_fmt", pix]
    # palette / RGB sources (GIF, PNG sequences...): lossless RGB H.264
    return ["-c:v", "libx264rgb", "-qp", "0", "-preset", "ultrafast", "-pix_fmt", "rgb24"]


def transform_clip(src: Path, dst: Path, name: str, timeout_s: float = FFMPEG_TIMEOUT_S) -> None:
    """Write ``src`` transformed by ``TRANSFORMS[name]`` to ``dst`` (an .mp4)."""
    if name not in TRANSFORMS:
        raise ConfigError(f"unknown transformation {name!r}; use one of {', '.join(TRANSFORMS)}")
    t = TRANSFORMS[name]
    # passthrough: never duplicate or drop frames to fit a constant rate (the fps
    # transforms change the rate with their filter, explicitly)
    cmd = [_tool("ffmpeg"), "-nostdin", "-y", "-v", "error", "-i", str(src), "-an", "-sn",
           "-fps_mode", "passthrough"]
    if t.vf:
        cmd += ["-vf", t.vf]
    cmd += [*_encoding(t, src, timeout_s), str(dst)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise DecodeError(f"{src}: ffmpeg {name} took longer than {timeout_s:.0f} s") from exc
    if proc.returncode != 0:
        raise DecodeError(f"{src}: ffmpeg {name} failed: {proc.stderr.strip()[-300:]}")


@dataclass(frozen=True)
class Outcome:
    """One clip under one transformation (``error`` set when it could not be scored)."""

    clip: str
    transform: str
    features: FloatArray | None
    score: float | None
    flagged: bool
    error: str | None = None


ScoreFn = Callable[[Path], ClipResult]


def _outcome(clip: str, name: str, fn: ScoreFn, path: Path) -> Outcome:
    try:
        r = fn(path)
    except RestravError as exc:
        return Outcome(clip, name, None, None, False, f"{exc.code}: {exc.message}")
    return Outcome(clip, name, r.centre.window.features, r.centre.p_ai, r.centre.flagged)


def run_robustness(
    clips: Sequence[Path],
    score: ScoreFn,
    transforms: Sequence[str] = DEFAULT_TRANSFORMS,
    progress: bool = False,
    work_dir: Path | None = None,
) -> list[Outcome]:
    """Score every clip as it is (transform ``original``) and under each transformation."""
    unknown = [t for t in transforms if t not in TRANSFORMS]
    if unknown:
        raise ConfigError(f"unknown transformation(s) {unknown}; use {', '.join(TRANSFORMS)}")
    out: list[Outcome] = []
    total = len(clips) * (1 + len(transforms))
    bar = tqdm(total=total, unit="variant", disable=not progress, file=sys.stderr,
               desc="robustness")
    with tempfile.TemporaryDirectory(prefix="restrav-robust-", dir=work_dir) as tmp:
        for i, clip in enumerate(clips):
            out.append(_outcome(str(clip), "original", score, Path(clip)))
            bar.update()
            for name in transforms:
                dst = Path(tmp) / f"{i}-{name}.mp4"
                try:
                    transform_clip(Path(clip), dst, name)
                except DecodeError as exc:
                    out.append(Outcome(str(clip), name, None, None, False, exc.message))
                else:
                    out.append(_outcome(str(clip), name, score, dst))
                    dst.unlink(missing_ok=True)
                bar.update()
    bar.close()
    return out


def robustness_report(
    outcomes: Sequence[Outcome], threshold: float | None = None
) -> dict[str, Any]:
    """Aggregate deltas against each clip's original, per transformation."""
    orig = {o.clip: o for o in outcomes if o.transform == "original"}
    names = list(dict.fromkeys(o.transform for o in outcomes if o.transform != "original"))
    d_idx = FEATURE_NAMES.index("d_mean")
    rows: list[dict[str, Any]] = []
    for name in names:
        pairs = [
            (orig[o.clip], o)
            for o in outcomes
            if o.transform == name
            and o.features is not None
            and o.clip in orig
            and orig[o.clip].features is not None
        ]
        failed = sum(1 for o in outcomes if o.transform == name and o.features is None)
        row: dict[str, Any] = {"transform": name, "clips": len(pairs), "failed": failed}
        if pairs:
            f0 = np.stack([a.features for a, _ in pairs])  # type: ignore[misc]
            f1 = np.stack([b.features for _, b in pairs])  # type: ignore[misc]
            # symmetric relative change in [0, 2]; 0 where both are 0 (e.g. theta_min)
            scale = np.maximum(np.abs(f0), np.abs(f1))
            rel = np.where(scale > 0, np.abs(f1 - f0) / np.where(scale > 0, scale, 1.0), 0.0)
            row.update(
                mean_abs_delta_theta_mean_deg=float(np.mean(np.abs(f1 - f0)[:, THETA_MEAN])),
                mean_rel_delta_d_mean=float(np.mean(rel[:, d_idx])),
                mean_rel_delta_features=float(np.mean(rel)),
                flagged=int(sum(b.flagged for _, b in pairs)),
            )
            scored = [(a.score, b.score) for a, b in pairs if a.score is not None
                      and b.score is not None]
            if scored:
                s = np.asarray(scored, dtype=np.float64)
                row["mean_abs_delta_score"] = float(np.mean(np.abs(s[:, 1] - s[:, 0])))
                row["mean_delta_score"] = float(np.mean(s[:, 1] - s[:, 0]))
                if threshold is not None:
                    row["decision_flip_rate"] = float(
                        np.mean((s[:, 0] >= threshold) != (s[:, 1] >= threshold))
                    )
        rows.append(row)
    per_clip = [
        {
            "clip": o.clip,
            "transform": o.transform,
            "score": o.score,
            "theta_mean": float(o.features[THETA_MEAN]) if o.features is not None else None,
            "flagged": o.flagged,
            "error": o.error,
        }
        for o in outcomes
    ]
    return {"threshold": threshold, "transforms": rows, "per_clip": per_clip}


def robustness_markdown(report: dict[str, Any]) -> str:
    """A Markdown table of :func:`robustness_report`."""

    def f(v: Any) -> str:
        return "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    lines = [
        "# ReStraV robustness",
        "",
        "Change against each clip's original (centred window). `lossless` is the control.",
        "",
        "| transform | clips | failed | mean abs Δ mean curvature (deg) | mean rel Δ d_mean "
        "| mean rel Δ features | mean abs Δ P(AI) | mean Δ P(AI) | decision flips | flagged |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["transforms"]:
        lines.append(
            f"| {r['transform']} | {r['clips']} | {r['failed']} | "
            f"{f(r.get('mean_abs_delta_theta_mean_deg'))} | {f(r.get('mean_rel_delta_d_mean'))} | "
            f"{f(r.get('mean_rel_delta_features'))} | {f(r.get('mean_abs_delta_score'))} | "
            f"{f(r.get('mean_delta_score'))} | {f(r.get('decision_flip_rate'))} | "
            f"{f(r.get('flagged'))} |"
        )
    return "\n".join(lines) + "\n"


__all__ = [
    "DEFAULT_TRANSFORMS",
    "TRANSFORMS",
    "Outcome",
    "robustness_markdown",
    "robustness_report",
    "run_robustness",
    "transform_clip",
]
