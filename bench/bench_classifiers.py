"""Prediction cost of every classifier kind: our numpy artifact vs the fitted
scikit-learn model, for one window (the streaming case) and for 10,000 windows.

Run: python bench/bench_classifiers.py   (prints a Markdown table; no assertions)
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monitor.core.classifier import KINDS, Scaler
from monitor.learn.fitting import fit_classifier, fit_kind
from monitor.types import N_FEATURES


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(np.float64)
    x = rng.normal(size=(n, N_FEATURES)) + 0.5 * y[:, None]
    return x, y


def _time(fn: Any, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    x, y = _data(2000)
    big, _ = _data(10_000, seed=1)
    one = big[:1]
    print("| kind | ours, 1 window (ms) | sklearn, 1 window (ms) | ours, 10k windows (ms) "
          "| sklearn, 10k windows (ms) |")
    print("|---|---|---|---|---|")
    for kind in KINDS:
        clf = fit_classifier(x, y, kind=kind)
        sk = None
        if kind in ("logreg", "gaussian_nb", "random_forest", "gradient_boosting", "svm_rbf"):
            scaler = Scaler.fit(x)
            _, sk = fit_kind(kind, scaler.transform(x), y)
        ours1 = _time(lambda c=clf: c.predict_proba(one), 50) * 1e3
        ours_n = _time(lambda c=clf: c.predict_proba(big), 3) * 1e3
        if sk is not None:
            fn = sk.decision_function if kind == "svm_rbf" else sk.predict_proba
            sk1 = f"{_time(lambda f=fn, s=scaler: f(s.transform(one)), 50) * 1e3:.3f}"
            skn = f"{_time(lambda f=fn, s=scaler: f(s.transform(big)), 3) * 1e3:.1f}"
        else:
            sk1 = skn = "-"
        print(f"| {kind} | {ours1:.3f} | {sk1} | {ours_n:.1f} | {skn} |")


if __name__ == "__main__":
    main()
