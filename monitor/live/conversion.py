"""Sampled frames into what the model takes: the conversions the engine's threads run.

Contract: :class:`RGBFrame` is what the engine gets (RGB pixels, or 4:2:0 planes for a
device-side conversion); :class:`TensorEmbedder` is what it needs of the model and
:class:`FramePreparer` the embedders that also make a frame's model input themselves
(a CPU runtime backend). The ``convert_*`` functions turn one frame into RGB, planes or
a prepared input, in any thread, and answer None (logged at debug) for a frame that
cannot be converted, so one bad frame never costs the batch. :func:`pixel_path`
resolves ``serve.engine.pixel_path``.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import threading
from collections.abc import Callable, Sequence
from typing import ParamSpec, Protocol, TypeVar

import torch

from ..media.colour import YUVPlanes
from ..types import RGBArray

log = logging.getLogger("restrav.engine")

P = ParamSpec("P")
T = TypeVar("T")


class RGBFrame(Protocol):
    """Anything that can give its RGB pixels (a :class:`~monitor.media.sources.SourceFrame`)."""

    def rgb(self) -> RGBArray:
        """RGB ``uint8`` ``(H, W, 3)``."""
        ...

    def planes(self) -> YUVPlanes | None:
        """Its 4:2:0 planes for conversion on the device, or None (use :meth:`rgb`)."""
        ...


class TensorEmbedder(Protocol):
    """What the engine needs from the model (:class:`~monitor.core.embed.Embedder` fits)."""

    @property
    def embedding_dim(self) -> int:
        """D."""
        ...

    @property
    def device(self) -> torch.device:
        """Where embeddings are returned."""
        ...

    def embed_tensor(self, frames: Sequence[RGBArray | YUVPlanes]) -> torch.Tensor:
        """``(N, D)`` float32 on :attr:`device`."""
        ...


class FramePreparer(Protocol):
    """An embedder that also turns one RGB frame into its model input, in any thread
    (:class:`~monitor.core.embed.Embedder` on a CPU runtime backend); its
    ``embed_tensor`` then takes those tensors."""

    @property
    def prepares_frames(self) -> bool:
        """True when :meth:`prepare` may run in the conversion threads (torch
        single-threaded there)."""
        ...

    def prepare(self, frame: RGBArray) -> torch.Tensor:
        """``(3, S, S)`` float32 model input of one RGB frame."""
        ...


def _or_none(convert: Callable[P, T]) -> Callable[P, T | None]:
    """``convert`` answering None (logged at debug) for a frame it cannot convert: one bad
    frame must not cost the batch (the caller counts it)."""
    @functools.wraps(convert)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> T | None:
        try:
            return convert(*args, **kwargs)
        # per-frame conversion boundary (sanctioned): one bad frame must not cost the
        # batch; the engine logs and counts it (frames_dropped{reason="convert_error"})
        except Exception:
            log.debug("conversion failed", exc_info=True)
            return None

    return guarded


@_or_none
def convert_rgb(frame: RGBFrame) -> RGBArray | YUVPlanes:
    """RGB pixels of a frame; None when the frame cannot be converted."""
    return frame.rgb()


@_or_none
def convert_prepared(embedder: FramePreparer, frame: RGBFrame) -> torch.Tensor:
    """A frame's model input, made by the embedder in this thread; None when the frame
    cannot be converted."""
    return embedder.prepare(frame.rgb())


@_or_none
def convert_yuv(frame: RGBFrame) -> RGBArray | YUVPlanes:
    """A frame's planes (converted on the device later), else its RGB pixels; None when
    the frame cannot be converted."""
    return frame.planes() or frame.rgb()


def single_threaded_torch() -> None:
    """A conversion thread's initializer where the embedder prepares frames: torch on
    one thread (two made the resize's small products 5-10x dearer)."""
    torch.set_num_threads(1)


def conversion_pool(workers: int, single_threaded: bool) -> concurrent.futures.ThreadPoolExecutor:
    """The engine's pool of ``workers`` conversion threads (``restrav-convert_N``), every
    one started before this returns (torch on one thread in each when ``single_threaded``).

    A ThreadPoolExecutor starts a thread only when a task finds none idle, so its thread
    count would climb for minutes with the load and with each burst after a reconnect;
    started at once, serve's thread count is flat from the first frame and a climb means a
    leak."""
    pool = concurrent.futures.ThreadPoolExecutor(
        workers, "restrav-convert",
        # torch single-threaded in each: one team of intra-op threads per converting
        # thread would oversubscribe the cores
        initializer=single_threaded_torch if single_threaded else None)
    # each task holds its thread until all have arrived, so every task gets its own thread
    barrier = threading.Barrier(workers)
    for done in [pool.submit(barrier.wait, 30.0) for _ in range(workers)]:
        done.result()
    return pool


def pixel_path(setting: str, device: torch.device) -> str:
    """``yuv`` (4:2:0 planes uploaded, converted and resized on the device) or ``rgb``
    (RGB made on the CPU by FFmpeg). ``auto`` takes ``yuv`` on CUDA, where it moves half
    the bytes and frees the CPU, and ``rgb`` on the CPU, where swscale's SIMD
    conversion is the faster of the two. Both give the same pixels (monitor.media.colour)."""
    if setting == "auto":
        return "yuv" if device.type == "cuda" else "rgb"
    return setting

