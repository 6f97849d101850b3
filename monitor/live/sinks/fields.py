"""What a stored score and event look like: the flat string fields the Redis sink writes.

Contract: :data:`SCORE_FIELDS` names a stored score's fields in order (the keys of
:meth:`StreamScore.to_json`); :func:`score_values` gives their strings (``str`` of each
value, ``""`` for None, ``"1"``/``"0"`` for booleans, the features a JSON list written as
``json.dumps`` writes it) and :func:`score_rows` the same strings for a batch, its
features' text made at once (:func:`features_json`). :func:`event_fields` flattens an
event. Pure functions of their arguments: no I/O.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence

import numpy as np
from pydantic_core import to_json

from ...types import StreamScore
from ..alerts import Event

SCORE_FIELDS: tuple[str, ...] = (
    "stream", "seq", "segment", "start_s", "end_s", "p_ai", "threshold", "is_ai", "flagged",
    "repeated_samples", "zero_steps", "zero_step_angle_deg", "wall_start", "wall_end",
    "scored_at", "features",
)
"""The fields of a stored score, in order (the keys of :meth:`StreamScore.to_json`)."""

NAMES_JSON = json.dumps(SCORE_FIELDS)
""":data:`SCORE_FIELDS` as one JSON list (the scripts' field names)."""


def _opt(v: object) -> str:
    return "" if v is None else str(v)


def score_values(score: StreamScore, features: str | None = None) -> list[str]:
    """The string values of one stored score, in the order of :data:`SCORE_FIELDS`:
    ``str`` of each value of ``score.to_json(features=True)``, ``""`` for None, ``"1"``
    / ``"0"`` for booleans, ``features`` a JSON list (built without the dict; or the
    given text, which must be ``json.dumps`` of the list: :func:`features_json`)."""
    s = score.score
    w = s.window
    is_ai = s.is_ai
    return [
        score.stream_id, str(score.seq), str(score.segment), str(round(score.start_s, 6)),
        str(round(score.end_s, 6)), _opt(s.p_ai), _opt(s.threshold),
        "" if is_ai is None else ("1" if is_ai else "0"), "1" if s.flagged else "0",
        _opt(s.repeated_samples), str(w.repeated_frames), str(w.zero_step_angle_deg),
        str(round(score.wall_start, 6)), str(round(score.wall_end, 6)),
        str(round(score.scored_at, 6)),
        json.dumps(w.features.tolist()) if features is None else features,
    ]


_SHORT_MIN = 1e-4
"""Below this magnitude ``repr`` of a float switches to an exponent written with two
digits at least (``1e-05``), where :func:`pydantic_core.to_json` writes ``0.00001`` or
``1e-5``. From it up, and for 0, NaN and the infinities, both write the same text
(the shortest that reads back, ``1e+16`` from 1e16 on); tests/test_sinks.py checks it."""


_PROBES = [0.1, 1 / 3, 1e-4, -2.5e-4, 5.0, -0.0, 0.0, 1e15, 1e16, 1.2345678901234568e17,
           1e22, 1.7976931348623157e308, float("nan"), float("inf"), float("-inf")]


@functools.cache
def _to_json_agrees() -> bool:
    """Whether this pydantic_core writes the probes as ``json.dumps`` does (checked once:
    another version may format floats otherwise; then :func:`features_json` keeps to
    ``json.dumps``)."""
    try:
        text = to_json([_PROBES], inf_nan_mode="constants").decode()
    except (TypeError, ValueError):
        return False
    return "[" + text[2:-2].replace(",", ", ") + "]" == json.dumps(_PROBES)


def features_json(rows: np.ndarray) -> list[str]:
    """``json.dumps(row.tolist())`` of each row of a 2-D float array: the same text, made
    in one :func:`pydantic_core.to_json` call for the rows whose every value is 0, not
    finite or at least :data:`_SHORT_MIN` in magnitude (about 10x faster: the float
    formatting of ``json.dumps`` was the Redis sink's largest cost), ``json.dumps`` for
    the others (and for all when this pydantic_core formats the probes otherwise)."""
    if rows.ndim != 2 or rows.dtype.kind != "f":
        raise ValueError(f"features_json needs a 2-D float array, not {rows.dtype} "
                         f"{rows.shape}")
    a = np.abs(rows)
    with np.errstate(invalid="ignore"):
        fast = ((a >= _SHORT_MIN) | (a == 0) | ~np.isfinite(a)).all(axis=1)
    if not _to_json_agrees():
        fast[:] = False
    out = [""] * rows.shape[0]
    quick = np.flatnonzero(fast).tolist()
    if quick:
        text = to_json(rows[quick].tolist(), inf_nan_mode="constants").decode()
        for i, part in zip(quick, text[2:-2].split("],["), strict=True):
            out[i] = "[" + part.replace(",", ", ") + "]"
    for i in np.flatnonzero(~fast).tolist():
        out[i] = json.dumps(rows[i].tolist())
    return out


def score_rows(scores: Sequence[StreamScore]) -> list[list[str]]:
    """:func:`score_values` of each score (the same strings), the features' text of all
    of them made at once (:func:`features_json`) when they are float rows of one length."""
    feats = [s.score.window.features for s in scores]
    if not feats or any(f.ndim != 1 or f.dtype.kind != "f" or len(f) != len(feats[0])
                        for f in feats):
        return [score_values(s) for s in scores]
    texts = features_json(np.stack(feats))
    return [score_values(s, t) for s, t in zip(scores, texts, strict=True)]


def score_fields(score: StreamScore) -> dict[str, str]:
    """The flat string fields stored for one score (stream entry and latest hash)."""
    return dict(zip(SCORE_FIELDS, score_values(score), strict=True))


def event_fields(event: Event) -> dict[str, str]:
    """The flat string fields stored for one event (an alert's, or who changed what)."""
    return {k: ("" if v is None else str(v)) for k, v in event.to_json().items()}
