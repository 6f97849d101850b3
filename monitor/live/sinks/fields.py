"""What a stored score and event look like: the flat string fields the Redis sink writes.

Contract: :data:`SCORE_FIELDS` names a stored score's fields in order (the keys of
:meth:`StreamScore.to_json`); :func:`score_values` gives their strings (``str`` of each
value, ``""`` for None, ``"1"``/``"0"`` for booleans, the features a JSON list written as
``json.dumps`` writes it; the features' text of a batch made at once by
:func:`features_json`). :func:`score_json_rows` gives, per batch, the text of each
score's values as the JSON list the Redis sink's scripts decode (``to_json(score_values(s))``,
made with the times rounded in numpy by :func:`round6`, which gives Python's ``round(x,
6)`` bit for bit, and the batch's numbers formatted in one call). :func:`event_fields`
flattens an event. Pure functions of their arguments: no I/O.
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


_EXACT_LIMIT = 2.0**52
"""Below this magnitude of ``x * 1e6`` :func:`round6` rounds in numpy; from it up (and
for values that are not finite) it calls Python's ``round`` per value."""


def _two_product_error(a: np.ndarray, b: float) -> np.ndarray:
    """The exact rounding error of ``a * b`` (Dekker's product by Veltkamp splitting):
    ``a * b == fl(a * b) + err`` exactly, for finite ``a`` far from overflow and a ``b``
    of at most 26 significant bits (``1e6`` has 14)."""
    p = a * b
    c = 134217729.0 * a  # 2**27 + 1
    hi = c - (c - a)
    lo = a - hi
    err: np.ndarray = (hi * b - p) + lo * b
    return err


def round6(values: np.ndarray) -> np.ndarray:
    """``round(x, 6)`` of each float (any shape): the same doubles as Python's ``round``, made per
    array. Python rounds the exact value of ``x`` at the sixth decimal (half to even) and
    converts the decimal back to the nearest double; here ``k``, the nearest integer to
    the exact ``x * 10**6`` (half to even), comes from the rounded product and its exact
    error (:func:`_two_product_error`: only a product that rounded onto a half needs it),
    and ``k / 1e6`` is the double nearest ``k / 10**6`` (an exact integer over an exact
    divisor, one rounding). Values not finite or with ``|x * 1e6| >= 2**52`` take
    Python's ``round`` (tests/test_sinks.py compares the two on awkward values)."""
    x = np.asarray(values, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        p = x * 1e6
        slow = ~(np.abs(p) < _EXACT_LIMIT)  # NaN and the infinities too
        safe = np.where(slow, 0.0, x)
        p = np.where(slow, 0.0, p)
        err = _two_product_error(safe, 1e6)
    k = np.rint(p)
    half = p - k  # exact: |p| < 2**52 and k is its nearest integer
    # a product that rounded onto a half from beyond it (np.where: adding 0 to -0.0
    # would give +0.0, where Python's round keeps the sign)
    k = np.where((half == 0.5) & (err > 0), k + 1, k)
    k = np.where((half == -0.5) & (err < 0), k - 1, k)
    out: np.ndarray = k / 1e6
    for i in np.flatnonzero(slow).tolist():
        out.flat[i] = round(float(x.flat[i]), 6)
    return out


_ROW_FORMAT = '[%s,"%s","%s","%s","%s","%s","%s","%s","%s","%s","%s","%s","%s","%s","%s","%s"]'
"""A stored score's values as the JSON list ``to_json`` writes of :func:`score_values`
(the stream id quoted separately; every other value is a number's text or a features
list: nothing to escape)."""


@functools.lru_cache(maxsize=4096)
def _quoted(text: str) -> str:
    """``text`` as a JSON string, as :func:`pydantic_core.to_json` writes it."""
    return to_json(text).decode()


def score_json_rows(scores: Sequence[StreamScore]) -> list[str]:
    """The text of ``to_json(score_values(s))`` for each score (the argument the sink's
    scripts decode), made per batch (:func:`_batch_rows`). A score with a value whose
    text ``to_json`` writes otherwise than ``str`` (NaN, below 1e-4 in magnitude, an int
    where a float belongs), a batch with features that are not float rows of one length
    or values of other types, and a pydantic_core that formats floats otherwise take
    :func:`score_values` itself."""
    if not scores:
        return []
    feats = [sc.score.window.features for sc in scores]
    width = len(feats[0])
    if all(f.ndim == 1 and f.dtype.kind == "f" and len(f) == width for f in feats):
        texts: list[str | None] = list(features_json(np.stack(feats)))
        if _to_json_agrees():
            try:
                return _batch_rows(scores, texts)
            except (TypeError, ValueError):  # a value to_json cannot write (numpy int)
                pass
    else:
        texts = [None] * len(scores)
    return [to_json(score_values(sc, t)).decode() for sc, t in zip(scores, texts, strict=True)]


def _batch_rows(scores: Sequence[StreamScore], texts: Sequence[str | None]) -> list[str]:
    """:func:`score_json_rows` of float features (``texts``: their JSON): the five
    rounded times by :func:`round6`, every number of the batch formatted in one
    :func:`pydantic_core.to_json` call, each row in one ``%``."""
    inner = [sc.score for sc in scores]
    wins = [s.window for s in inner]
    raw = [(sc.start_s, sc.end_s, sc.wall_start, sc.wall_end, sc.scored_at) for sc in scores]
    rounded = round6(np.array(raw, dtype=np.float64))
    # the floats whose text must be str's: times, p_ai, threshold, angle (None: NaN here)
    given = [(s.p_ai, s.threshold, w.zero_step_angle_deg)
             for s, w in zip(inner, wins, strict=True)]
    floats = np.concatenate([rounded, np.array(given, dtype=np.float64)], axis=1)
    a = np.abs(floats)
    with np.errstate(invalid="ignore"):
        same = ((a >= _SHORT_MIN) | (a == 0)) & np.isfinite(a)
    for i, j in np.argwhere(np.isnan(floats[:, 5:])).tolist():
        same[i, 5 + j] = given[i][j] is None  # a None is written "", a NaN is not
    fast = same.all(axis=1).tolist()
    if {type(v) for r in raw for v in r} != {float}:  # round(0, 6) is 0, not 0.0
        fast = [all(type(v) is float for v in r) and f for r, f in zip(raw, fast, strict=True)]
    nums = [[sc.seq, sc.segment, *t, s.p_ai, s.threshold, s.repeated_samples,
             w.repeated_frames, w.zero_step_angle_deg]
            for sc, s, w, t in zip(scores, inner, wins, rounded.tolist(), strict=True)]
    fields = to_json(nums).decode()[2:-2].split("],[")
    out: list[str] = []
    for sc, s, quick, text, ft in zip(scores, inner, fast, fields, texts, strict=True):
        if not quick:
            out.append(to_json(score_values(sc, ft)).decode())
            continue
        seq, seg, t0, t1, ws, we, at, p, thr, rep, zf, ang = text.split(",")
        is_ai = s.is_ai
        out.append(_ROW_FORMAT % (
            _quoted(sc.stream_id), seq, seg, t0, t1, "" if p == "null" else p,
            "" if thr == "null" else thr, "" if is_ai is None else ("1" if is_ai else "0"),
            "1" if s.flagged else "0", "" if rep == "null" else rep, zf, ang, ws, we, at, ft))
    return out


def score_fields(score: StreamScore) -> dict[str, str]:
    """The flat string fields stored for one score (stream entry and latest hash)."""
    return dict(zip(SCORE_FIELDS, score_values(score), strict=True))


def event_fields(event: Event) -> dict[str, str]:
    """The flat string fields stored for one event (an alert's, or who changed what)."""
    return {k: ("" if v is None else str(v)) for k, v in event.to_json().items()}
