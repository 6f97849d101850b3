"""The Redis sink's rows made per batch: ``round6`` is Python's ``round(x, 6)`` and
``score_json_rows`` is ``to_json(score_values(s))`` of each score, on awkward values."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from pydantic_core import to_json

from monitor.live.sinks import fields as fields_module
from monitor.live.sinks.fields import round6, score_json_rows, score_values
from monitor.types import Score, StreamScore, WindowFeatures

from .test_sinks import _awkward_floats


def _same_doubles(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit for bit (the sign of zero counts), NaN equal to NaN."""
    return bool(np.all((a.view(np.int64) == b.view(np.int64)) | (np.isnan(a) & np.isnan(b))))


def test_round6_is_pythons_round() -> None:
    """Every value rounds to the double Python's ``round(x, 6)`` gives: random times
    and stream clocks, values on and beside the sixth decimal's halves (dyadic ties such
    as 1/128, whose product by 1e6 is exact), tiny negatives (a signed zero), random bit
    patterns, the limit of the numpy path, and what is not finite."""
    rng = np.random.default_rng(6)
    n = 40_000
    halves = (rng.integers(0, 2**40, n) + 0.5) / 1e6
    dyadic = (rng.integers(0, 10**9, n) * 2 + 1) / 2.0 ** rng.integers(1, 30, n)
    values = np.concatenate([
        rng.random(n) * 2e9, rng.random(n) * 100, halves, np.nextafter(halves, 0),
        np.nextafter(halves, 1e300), dyadic, -dyadic,
        rng.standard_normal(n) * 10.0 ** rng.integers(-12, 12, n),
        _awkward_floats(rng, n),
        np.array([1 / 128, -1 / 128, 3 + 1 / 128, 2.5e-7, -2.5e-7, 5e-7, -1e-9, 0.0, -0.0,
                  2**52 / 1e6, np.nextafter(2**52 / 1e6, 0), 9e9, np.nan, np.inf, -np.inf]),
    ])
    expected = np.array([round(float(x), 6) for x in values])
    assert _same_doubles(round6(values), expected)
    assert _same_doubles(round6(values[:0]), expected[:0])


def _score(stream: str, seq: int, feats: np.ndarray, **kw: object) -> StreamScore:
    p_ai = kw.pop("p_ai", 0.25)
    threshold = kw.pop("threshold", 0.5)
    repeated = kw.pop("repeated_samples", 0)
    wf = WindowFeatures(features=feats, repeated_frames=int(seq % 3),
                        zero_step_angle_deg=float(kw.pop("angle", 0.0)))
    sc = Score(window=wf, p_ai=p_ai, threshold=threshold,  # type: ignore[arg-type]
               repeated_samples=repeated)  # type: ignore[arg-type]
    args: dict[str, object] = {"start_s": seq * 0.087, "end_s": seq * 0.087 + 2.0,
                               "arrival_s": 0.0, "scored_at": 1765159200.123456789 + seq,
                               "wall_start": 1765159198.0 + seq / 7,
                               "wall_end": 1765159200.0 + seq / 7}
    args.update(kw)
    return StreamScore(stream, seq, seq // 10, score=sc, **args)  # type: ignore[arg-type]


def _cases() -> list[StreamScore]:
    rng = np.random.default_rng(11)
    out = [_score(f"cam-{i % 7}", i, rng.standard_normal(21) * 10.0 ** float(i % 5 - 2))
           for i in range(60)]
    odd: list[StreamScore] = [
        _score("a", 1, rng.random(21), p_ai=None, threshold=None, repeated_samples=None),
        _score("b", 2, rng.random(21), p_ai=3e-5),  # text of to_json differs: str's kept
        _score("c", 3, rng.random(21), p_ai=np.float64(0.75), angle=90.0),
        _score("d", 4, rng.random(21), start_s=0, end_s=2),  # ints: round(0, 6) is 0
        _score("e", 5, rng.random(21), start_s=4.9e-5, wall_start=-1e-9),
        _score("ü-cam\u00e9", 7, rng.random(21)),  # quoted as to_json quotes it
        _score("g", 8, np.array([np.nan, np.inf, -0.0, 2e-5, 1e17] + [0.5] * 16)),
        _score("h", 9, rng.random(21), scored_at=float("nan"), wall_end=1e300),
        _score("i", 10, rng.random(21), p_ai=float("nan"), threshold=None),  # str: "nan"
    ]
    for i, s in enumerate(odd):
        out.insert(3 * i + 1, s)
    return out


def test_score_json_rows_are_to_json_of_score_values() -> None:
    """Each row is the text of ``to_json(score_values(s))``: None, booleans, rounding,
    ints where floats belong, tiny values, numpy scalars, non-ASCII stream ids, features
    that are not finite; also for features of another length (the whole batch slow)."""
    cases = _cases()
    rows = score_json_rows(cases)
    assert rows == [to_json(score_values(s)).decode() for s in cases]
    assert [row for row in rows if '"ü-cam' in row]  # the id is kept, not escaped away
    short = dataclasses.replace(cases[5], score=dataclasses.replace(
        cases[5].score, window=dataclasses.replace(cases[5].score.window,
                                                   features=np.arange(5.0))))
    mixed = [*cases[:5], short]
    assert score_json_rows(mixed) == [to_json(score_values(s)).decode() for s in mixed]
    assert score_json_rows([]) == []
    # a value to_json cannot write (a numpy integer): the batch made one score at a time
    numpy_int = [*cases[:4], _score("f", 6, cases[0].score.window.features,
                                    repeated_samples=np.int64(3))]
    assert score_json_rows(numpy_int) == [to_json(score_values(s)).decode()
                                          for s in numpy_int]


def test_score_json_rows_without_the_fast_formatting(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pydantic_core that formats floats otherwise: every row from ``score_values``."""
    monkeypatch.setattr(fields_module, "_to_json_agrees", lambda: False)
    cases = _cases()[:12]
    assert score_json_rows(cases) == [to_json(score_values(s)).decode() for s in cases]
