"""The stage order for scoring a clip: decode -> sample -> embed -> geometry -> classify.

This is the only module that knows how the stages connect. :func:`score_file`
decodes a clip once and computes

* the paper's centred window (t0 = max(0, duration/2 - 1 s)), batch geometry;
* optionally every window along the 11.5 Hz grid from the clip start, every
  ``hop`` samples, with the incremental geometry (each frame embedded once,
  whatever the overlap).

Distinct frames are embedded once, in batches, even when both schedules or
repeated samples show them. Memory is bounded by the batch size, not the clip.

Features are computed in the convention of the classifier applied (the angle at a
zero-length step, :data:`~monitor.types.ZERO_STEP_ANGLES_DEG`), or in the one asked
for when there is no classifier (features only, e.g. ``restrav extract``).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import NotEnoughFrames
from ..media.decode import DecodeLimits, MediaSource, VideoInfo, source_name
from ..media.decode_file import probe, sample_file
from ..media.sampler import centre_window_start, grid_times, window_times
from ..types import (
    FEATURE_NAMES,
    WINDOW_SAMPLES,
    Sample,
    Score,
    WindowClassifier,
    WindowFeatures,
    check_zero_step_angle,
    zero_step_angle_of,
)
from .embed import Embedder
from .geometry import WindowRing, window_features

CENTRE = "centre"
GRID = "grid"
_EMBED_CACHE_FRAMES = 64
PENDING_RGB_BYTES = 192 * 1024**2
"""RGB bytes of sampled frames held before they are embedded: large frames (4096 x
4096 is 48 MiB each) are embedded in smaller batches than ``batch_size``."""


@dataclass
class ClipResult:
    """What scoring one clip produced: its info, the centred window and, if asked, all windows."""

    path: str
    info: VideoInfo
    centre: Score
    windows: list[Score] | None = None
    frames_embedded: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    centre_embeddings: torch.Tensor | None = None
    """``(24, D)`` float32 embeddings of the centred window (``keep_embeddings``)."""
    window_embeddings: list[torch.Tensor] | None = None
    """One ``(24, D)`` tensor per entry of ``windows`` (``keep_embeddings``)."""

    def to_json(self) -> dict[str, Any]:
        """The JSON object `restrav score` prints for this clip."""
        out: dict[str, Any] = {
            "path": self.path,
            "ok": True,
            "video": self.info.as_dict(),
            "window": score_json(self.centre),
            "frames_embedded": self.frames_embedded,
        }
        if self.windows is not None:
            out["windows"] = [score_json(s, features=True) for s in self.windows]
        out.update(self.extra)
        return out


def score_json(score: Score, features: bool = True) -> dict[str, Any]:
    """JSON view of one scored window."""
    w = score.window
    out: dict[str, Any] = {
        "start_s": round(w.start_s, 6),
        "repeated_frames": score.repeated_samples,
        "zero_steps": w.repeated_frames,
        "zero_step_angle_deg": w.zero_step_angle_deg,
        "flagged": score.flagged,
        "score": score.p_ai,
        "threshold": score.threshold,
        "is_ai": score.is_ai,
    }
    if features:
        out["features"] = dict(zip(FEATURE_NAMES, (float(v) for v in w.features)))
    return out


def make_score(
    window: WindowFeatures,
    classifier: WindowClassifier | None,
    source: str,
    repeated_samples: int | None = None,
) -> Score:
    """Attach P(AI) (or None without a classifier) to a window's features."""
    if classifier is None:
        return Score(window=window, p_ai=None, source=source, repeated_samples=repeated_samples)
    p = float(classifier.predict_proba(window.features[None, :])[0])
    return Score(
        window=window,
        p_ai=p,
        threshold=float(classifier.threshold),
        source=source,
        repeated_samples=repeated_samples,
    )


def score_file(
    path: MediaSource,
    embedder: Embedder,
    classifier: WindowClassifier | None = None,
    limits: DecodeLimits = DecodeLimits(),
    all_windows: bool = False,
    hop: int = 1,
    on_window: Callable[[Score], None] | None = None,
    keep_embeddings: bool = False,
    start_s: float | None = None,
    on_frames: Callable[[int], None] | None = None,
    zero_step_angle_deg: float | None = None,
) -> ClipResult:
    """Score one clip. ``hop`` is in samples (1 = a window at every 11.5 Hz sample).
    ``on_frames(n)`` is told each time ``n`` more frames were embedded (progress).

    Features are in the convention of ``classifier`` (0 degrees at zero-length
    steps without one); ``zero_step_angle_deg`` asks for another one, which must
    agree with the classifier's when both are given (ValueError otherwise).

    ``start_s`` places the "centre" window at that time instead of the clip's middle.
    ``keep_embeddings`` also returns the windows' embeddings (on the embedder's device).

    Raises :class:`~monitor.errors.InputError` subclasses for bad input.
    """
    if hop < 1:
        raise ValueError("hop must be >= 1 sample")
    angle = zero_step_angle_of(classifier)
    if zero_step_angle_deg is not None:
        angle = check_zero_step_angle(zero_step_angle_deg)
        if classifier is not None and angle != zero_step_angle_of(classifier):
            raise ValueError(
                f"features at {angle:g} degrees per zero step cannot be scored by a classifier "
                f"trained at {zero_step_angle_of(classifier):g}"
            )
    source = source_name(path)
    limits = limits.with_deadline()
    info = probe(path, limits)
    t0_s = centre_window_start(info.duration_s) if start_s is None else start_s
    schedules = {CENTRE: window_times(t0_s)}
    if all_windows:
        schedules[GRID] = grid_times(info.duration_s)

    cache: OrderedDict[int, torch.Tensor] = OrderedDict()
    pending: list[tuple[str, Sample]] = []
    pending_frames: set[int] = set()
    centre_z: list[torch.Tensor] = []
    centre_times: list[float] = []
    centre_repeats = 0
    grid_repeats: deque[bool] = deque(maxlen=WINDOW_SAMPLES - 1)
    traj = WindowRing(embedder.embedding_dim, embedder.device, zero_step_angle_deg=angle)
    grid_start_times: deque[float] = deque(maxlen=WINDOW_SAMPLES)
    windows: list[Score] = []
    window_z: list[torch.Tensor] = []
    embedded = 0

    def flush() -> None:
        nonlocal embedded, centre_repeats
        todo: dict[int, Sample] = {}
        for _, s in pending:
            if s.frame.index not in cache and s.frame.index not in todo:
                todo[s.frame.index] = s
        if todo:
            z = embedder.embed_tensor([s.frame.rgb for s in todo.values()])
            embedded += len(todo)
            if on_frames is not None:
                on_frames(len(todo))
            for i, idx in enumerate(todo):
                cache[idx] = z[i]
        for name, s in pending:
            zi = cache[s.frame.index]
            cache.move_to_end(s.frame.index)
            if name == CENTRE:
                centre_z.append(zi)
                centre_times.append(s.time_s)
                centre_repeats += int(s.repeated and len(centre_z) > 1)
            else:
                if traj.samples > 0:
                    grid_repeats.append(s.repeated)
                traj.update(zi)
                grid_start_times.append(s.time_s)
                if traj.ready and (traj.samples - WINDOW_SAMPLES) % hop == 0:
                    wf = traj.features(start_s=grid_start_times[0])
                    assert wf is not None
                    sc = make_score(wf, classifier, source, sum(grid_repeats))
                    windows.append(sc)
                    if keep_embeddings:
                        window_z.append(traj.window())
                    if on_window is not None:
                        on_window(sc)
        pending.clear()
        pending_frames.clear()
        while len(cache) > _EMBED_CACHE_FRAMES:
            cache.popitem(last=False)

    pending_bytes = 0

    def on_sample(name: str, s: Sample) -> None:
        nonlocal pending_bytes
        pending.append((name, s))
        if s.frame.index not in pending_frames:
            pending_frames.add(s.frame.index)
            pending_bytes += s.frame.rgb.nbytes
        if len(pending_frames) >= embedder.batch_size or pending_bytes >= PENDING_RGB_BYTES:
            flush()
            pending_bytes = 0

    info = sample_file(path, schedules, on_sample, limits, info)
    flush()
    if len(centre_z) != WINDOW_SAMPLES:
        raise NotEnoughFrames(f"{source}: only {len(centre_z)} of {WINDOW_SAMPLES} samples decoded")
    z = torch.stack(centre_z).double().cpu().numpy()
    centre = window_features(z, start_s=centre_times[0], zero_step_angle_deg=angle)
    return ClipResult(
        path=source,
        info=info,
        centre=make_score(centre, classifier, source, centre_repeats),
        windows=windows if all_windows else None,
        frames_embedded=embedded,
        centre_embeddings=torch.stack(centre_z) if keep_embeddings else None,
        window_embeddings=window_z if keep_embeddings and all_windows else None,
    )


def error_json(path: str, code: str, message: str) -> dict[str, Any]:
    """The JSON object `restrav score` prints for a clip that failed."""
    return {"path": path, "ok": False, "error": {"code": code, "message": message}}


__all__ = ["ClipResult", "error_json", "make_score", "score_file", "score_json"]
