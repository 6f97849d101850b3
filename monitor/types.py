"""Value types that flow between stages, and the Protocols of the seams.

This is a leaf module: it imports nothing from the project. Every stage module
(decode, sampler, embed, geometry, classifier, sinks) talks to the others only
through these types, so the stages never import each other.

Array conventions: RGB frames are ``uint8`` arrays of shape ``(H, W, 3)``;
embeddings are ``(N, D)`` float arrays with ``D = tokens * hidden`` (98,688 for
DINOv2 ViT-S/14 at 224 px); features are ``(21,)`` float64 in SPEC order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

RGBArray = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float64]

WINDOW_SAMPLES = 24
"""T: samples per window (SPEC section 1)."""
WINDOW_S = 2.0
"""Span of a window in seconds, first to last sample."""
SAMPLE_INTERVAL_S = WINDOW_S / (WINDOW_SAMPLES - 1)
"""dt = 2/23 s, i.e. 11.5 Hz."""
SAMPLE_HZ = 1.0 / SAMPLE_INTERVAL_S
N_FEATURES = 21

FEATURE_NAMES: tuple[str, ...] = (
    *(f"d_{i}" for i in range(7)),
    *(f"theta_{i}" for i in range(6)),
    "d_mean",
    "d_min",
    "d_max",
    "d_var",
    "theta_mean",
    "theta_min",
    "theta_max",
    "theta_var",
)
"""Names of the 21 features in the official order (SPEC section 5)."""

ZERO_STEP_ANGLES_DEG: tuple[float, ...] = (0.0, 90.0)
"""The feature conventions: the turning angle given next to a zero-length step
(a repeated frame). 0 degrees is SPEC section 4 (the default, and what classifiers
trained here use); 90 degrees is what the upstream code computes (its cosine
similarity is 0 there), and what the published classifier was trained on."""


NO_CLASSIFIER = "none"
"""The classifier reference (``--classifier``, ``classifier.path``, a job's
``options.classifier``) that asks for features only: no P(AI)."""


def check_zero_step_angle(value: float) -> float:
    """Return ``value`` as a float if it names a feature convention, else raise ValueError."""
    v = float(value)
    if v not in ZERO_STEP_ANGLES_DEG:
        raise ValueError(
            f"zero_step_angle_deg must be 0 (SPEC) or 90 (upstream code), got {value!r}"
        )
    return v


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded video frame.

    ``pts_s`` is the presentation time in seconds (pts * time_base), relative to
    nothing: callers compare it with times on the same clock. ``index`` is the
    decode order number within its source, used to recognise repeated samples.
    """

    rgb: RGBArray
    pts_s: float
    index: int


@dataclass(frozen=True, slots=True)
class Sample:
    """The frame on screen at one sample time of the 11.5 Hz grid.

    ``repeated`` is True when this sample shows the same frame as the previous
    sample of its window (a source slower than 11.5 fps, or a stall).
    """

    time_s: float
    frame: Frame
    repeated: bool


@dataclass(frozen=True, slots=True)
class StepGeometry:
    """What one new sample adds to a trajectory: a distance and (from the second
    step on) a turning angle in degrees. ``zero_step`` marks a step shorter than
    the geometry epsilon (a repeated frame)."""

    distance: float
    angle_deg: float | None
    zero_step: bool


@dataclass(frozen=True, slots=True)
class WindowFeatures:
    """The 21 ReStraV features of one 24-sample window.

    ``features`` is float64 ``(21,)`` in SPEC order; ``repeated_frames`` counts
    zero-length steps (repeated frames) in the window; ``start_s`` is the time of
    the first sample on the source's clock; ``zero_step_angle_deg`` is the feature
    convention they were computed in (:data:`ZERO_STEP_ANGLES_DEG`).
    """

    features: FloatArray
    repeated_frames: int
    start_s: float = 0.0
    distances: FloatArray = field(default_factory=lambda: np.zeros(0))
    angles_deg: FloatArray = field(default_factory=lambda: np.zeros(0))
    zero_step_angle_deg: float = 0.0

    def as_dict(self) -> dict[str, float]:
        """Return the features keyed by their SPEC names."""
        return {n: float(v) for n, v in zip(FEATURE_NAMES, self.features)}


@dataclass(frozen=True, slots=True)
class Score:
    """A scored window: the features and P(AI-generated), or None without a classifier.

    ``flagged`` is set when the window had repeated frames (SPEC section 1: such
    windows are flagged, never silently scored as normal).
    """

    window: WindowFeatures
    p_ai: float | None
    threshold: float | None = None
    source: str = ""
    repeated_samples: int | None = None
    """Samples that showed the same frame as the sample before (from the sampler);
    ``window.repeated_frames`` counts zero-length steps, which also catches
    identical content (a frozen feed)."""

    @property
    def flagged(self) -> bool:
        """True when the window had repeated frames or zero-length steps."""
        return self.window.repeated_frames > 0 or bool(self.repeated_samples)

    @property
    def is_ai(self) -> bool | None:
        """The decision at ``threshold``; None when there is no score or threshold."""
        if self.p_ai is None or self.threshold is None:
            return None
        return self.p_ai >= self.threshold


@dataclass(frozen=True, slots=True)
class StreamScore:
    """One scored window of a live stream.

    ``seq`` counts the stream's scored windows; ``start_s``/``end_s`` are the
    times of its first and last samples on the source clock; ``arrival_s`` is
    the monotonic arrival time of its last frame (for end-to-end latency);
    ``wall_start``/``wall_end`` are the Unix times at which the frames of its
    first and last samples arrived (what the window covers in real time);
    ``scored_at`` is the Unix time the score was computed. ``fence`` is the
    fencing token of the replica's lease on the stream (None without leases):
    the Redis sink refuses to write a score whose token is stale.
    """

    stream_id: str
    seq: int
    segment: int
    start_s: float
    end_s: float
    score: Score
    arrival_s: float
    scored_at: float
    wall_start: float = 0.0
    wall_end: float = 0.0
    fence: int | None = None

    @property
    def p_ai(self) -> float | None:
        """P(AI-generated), None without a classifier."""
        return self.score.p_ai

    def to_json(self, features: bool = False) -> dict[str, Any]:
        """The JSON object sinks write (keys are stable; see README)."""
        s = self.score
        out: dict[str, Any] = {
            "stream": self.stream_id,
            "seq": self.seq,
            "segment": self.segment,
            "start_s": round(self.start_s, 6),
            "end_s": round(self.end_s, 6),
            "p_ai": s.p_ai,
            "threshold": s.threshold,
            "is_ai": s.is_ai,
            "flagged": s.flagged,
            "repeated_samples": s.repeated_samples,
            "zero_steps": s.window.repeated_frames,
            "zero_step_angle_deg": s.window.zero_step_angle_deg,
            "wall_start": round(self.wall_start, 6),
            "wall_end": round(self.wall_end, 6),
            "scored_at": round(self.scored_at, 6),
        }
        if features:
            out["features"] = [float(v) for v in s.window.features]
        return out


class SourceClosed(Exception):
    """Raised by :meth:`FrameSource.recv` when the source has ended for good."""


@runtime_checkable
class FrameSource(Protocol):
    """A live or file source of decoded frames (the aiortc ``MediaStreamTrack`` shape).

    ``recv`` returns the next frame in presentation order (``pts_s`` on the
    source's own clock) and raises :class:`SourceClosed` at the end;
    ``aclose`` stops any decode thread and releases the connection.
    """

    async def recv(self) -> Frame:
        """Wait for and return the next frame."""
        ...

    async def aclose(self) -> None:
        """Stop and release everything the source holds; idempotent."""
        ...


@runtime_checkable
class FrameEmbedder(Protocol):
    """Turns RGB frames into flattened token embeddings (the seam to the model)."""

    @property
    def embedding_dim(self) -> int:
        """D, the width of one embedding (tokens * hidden)."""
        ...

    def embed(self, frames: Sequence[RGBArray]) -> npt.NDArray[np.float32]:
        """Return a ``(len(frames), D)`` float32 array, one row per frame, in order."""
        ...


@runtime_checkable
class WindowClassifier(Protocol):
    """Turns feature rows into P(AI-generated).

    ``zero_step_angle_deg`` is the feature convention it was trained on: whoever
    applies it computes the features in that convention (:func:`zero_step_angle_of`).
    """

    threshold: float
    zero_step_angle_deg: float

    def predict_proba(self, features: npt.NDArray[Any]) -> FloatArray:
        """Return P(AI) for each row of an ``(N, 21)`` feature array."""
        ...


def zero_step_angle_of(classifier: WindowClassifier | None) -> float:
    """The feature convention to compute features in for ``classifier``: its own, or
    SPEC's 0 degrees when there is none (features only)."""
    return 0.0 if classifier is None else float(classifier.zero_step_angle_deg)
