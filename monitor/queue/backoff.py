"""Retry pacing for the worker's Redis calls: doubling delays with jitter, capped."""

from __future__ import annotations

import random


class Backoff:
    """Delays of ``first_s``, doubling up to ``max_s``, each scaled by a random 0.5-1.5.

    ``next_s()`` returns the delay before the next try; ``reset()`` after a success.
    """

    def __init__(self, first_s: float = 0.1, max_s: float = 5.0) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self._current_s = first_s

    def next_s(self) -> float:
        """The delay to wait now; the following one is twice as long (capped)."""
        delay = self._current_s * (0.5 + random.random())
        self._current_s = min(self._current_s * 2, self.max_s)
        return delay

    def reset(self) -> None:
        """Back to the first delay (after a success)."""
        self._current_s = self.first_s
