"""Stand-ins of known cost for benchmarks and tests: a backbone and a live source.

Contract:

* :class:`StandInEmbedder` fits :class:`~monitor.live.engine.TensorEmbedder`: one call
  for ``n`` frames sleeps ``fixed_s + n * per_sample_s`` (the GIL is released, as
  while a GPU computes) and returns ``(n, dim)`` float32 embeddings drawn from a
  seeded generator (distinct, so that every step and angle is defined). It measures
  the engine, not a model: ``2 ms + n / 12,000 s`` is about an H100 in bf16.
* :class:`StillFrame` is a frame for samples submitted directly to the engine.
* :class:`SyntheticSource` is a live source of ``size`` x ``size`` RGB frames at
  ``fps`` in real time (``synth://NAME?fps=11.5&size=32``); frame times follow the
  source clock even when the event loop lags (it then hands over the frames it owes at
  once, as a network buffer would). :func:`register_synthetic_source` registers it as
  kind ``synthetic`` (scheme ``synth``); nothing is registered at import.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import torch

from ..config import StreamSpec
from ..media.sources.base import SourceContext, SourceFrame, register_source_kind
from ..types import SourceClosed


class StandInEmbedder:
    """A backbone of known cost (see the module docstring)."""

    def __init__(self, fixed_s: float = 0.002, per_sample_s: float = 1 / 12_000,
                 dim: int = 64, seed: int = 0) -> None:
        self.fixed_s = fixed_s
        self.per_sample_s = per_sample_s
        self._dim = dim
        self._gen = torch.Generator().manual_seed(seed)
        self._lock = threading.Lock()
        self.calls = 0

    @property
    def embedding_dim(self) -> int:
        """D."""
        return self._dim

    @property
    def device(self) -> torch.device:
        """Always the CPU (the cost is simulated)."""
        return torch.device("cpu")

    def embed_tensor(self, frames: Sequence[Any]) -> torch.Tensor:
        """Sleep the batch's cost; ``(n, dim)`` random embeddings."""
        n = len(frames)
        time.sleep(self.fixed_s + n * self.per_sample_s)
        with self._lock:
            self.calls += 1
            return torch.randn(n, self._dim, generator=self._gen)


class StillFrame:
    """One black ``size`` x ``size`` RGB frame for :class:`~monitor.live.engine.EngineSample`
    (conversion costs nothing: the engine is measured, not the pixels)."""

    def __init__(self, size: int = 16) -> None:
        self.image = np.zeros((size, size, 3), dtype=np.uint8)

    def rgb(self) -> Any:
        """The pixels."""
        return self.image

    def planes(self) -> None:
        """No planes: the engine uses :meth:`rgb`."""
        return None


def _rgb(image: Any) -> Any:
    return image


class SyntheticSource:
    """Frames at ``fps`` in real time (see the module docstring)."""

    def __init__(self, description: str, fps: float, size: int, frames: int = 0) -> None:
        self.description = description
        self.fps = fps
        self.frames = frames  # 0: endless
        self._image = np.zeros((size, size, 3), dtype=np.uint8)
        self._t0 = time.monotonic()
        self._i = 0
        self._closed = False

    @classmethod
    async def open(cls, spec: StreamSpec, ctx: SourceContext) -> SyntheticSource:
        """The source of ``spec`` (query: ``fps``, ``size``, ``frames``)."""
        q = parse_qs(urlsplit(spec.url).query)
        return cls(ctx.description, float(q.get("fps", ["11.5"])[0]),
                   int(q.get("size", ["32"])[0]), int(q.get("frames", ["0"])[0]))

    async def recv(self) -> SourceFrame:
        """The next frame, at its time on the source clock."""
        if self._closed or (self.frames and self._i >= self.frames):
            raise SourceClosed(self.description)
        due = self._t0 + self._i / self.fps
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        i = self._i
        self._i += 1
        return SourceFrame(pts_s=i / self.fps, arrival_s=time.monotonic(), index=i,
                           image=self._image, to_rgb=_rgb)

    async def aclose(self) -> None:
        """Stop (idempotent)."""
        self._closed = True


def register_synthetic_source() -> None:
    """Make kind ``synthetic`` (``synth://`` URLs) available to stream specs."""
    register_source_kind("synthetic", SyntheticSource.open, ("synth",))
