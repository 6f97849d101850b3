"""SPEC section 2's resize of one frame, computed as banded matrix products.

Contract:

* :func:`frame_pixels` turns one RGB ``uint8`` ``(H, W, 3)`` frame into the model input
  ``(3, S, S)`` float32: float32 / 255, bicubic resize with antialiasing to S x S, no
  crop, no normalisation: the same function as :func:`monitor.core.embed.preprocess`
  (``torch.nn.functional.interpolate(..., mode="bicubic", antialias=True)``), equal to
  it within float32 rounding (the sums are taken in another order; the largest
  difference measured on 720p frames is 7e-7 on the [0, 1] scale, see
  ``tests/test_resize.py`` and BENCHMARKS.md).
* The resize is separable and linear: ``out_c = Wy @ X_c @ Wx^T`` with one weight
  matrix per axis. The weights are torch's own (:func:`axis_weights`: interpolate
  applied to an identity matrix, so the kernel, its support and its normalisation are
  exactly interpolate's) and mostly zero (a band about 4 x the scale wide), so each
  axis is computed as a few dense products of row blocks with the columns their band
  covers. On one core this costs about a third of interpolate's generic kernel on a
  720p frame, and it is meant to run on one core: call it from several threads (one
  frame each) with torch's intra-op threads at 1; with more, torch starts a thread team
  per calling thread (:func:`parallel_safe`).
* CPU only; weights are cached per (input size, output size).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from ..types import RGBArray

BLOCK_ROWS = 16
"""Output rows (or columns) per dense product: larger blocks cover more zeros of the band,
smaller ones cost more calls (16 was the cheapest at 720p -> 224, BENCHMARKS.md)."""

Blocks = tuple[tuple[int, int, int, int, torch.Tensor], ...]


@functools.lru_cache(maxsize=32)
def axis_weights(n_in: int, n_out: int) -> torch.Tensor:
    """``(n_out, n_in)`` float32: interpolate's bicubic antialiased weights along one axis
    (row ``o`` holds the weight of each input sample in output sample ``o``)."""
    eye = torch.eye(n_in, dtype=torch.float32).view(1, 1, n_in, n_in)
    with torch.inference_mode():
        w = F.interpolate(eye, size=(n_out, n_in), mode="bicubic", antialias=True,
                          align_corners=False)
    return w[0, 0].contiguous()


@functools.lru_cache(maxsize=32)
def axis_blocks(n_in: int, n_out: int, transposed: bool, block: int = BLOCK_ROWS) -> Blocks:
    """The non-zero band of :func:`axis_weights` in blocks of ``block`` output samples:
    ``(o0, o1, i0, i1, weights)`` with ``weights`` the ``[o0:o1, i0:i1]`` part
    (transposed to ``(i1 - i0, o1 - o0)`` when ``transposed``), contiguous."""
    w = axis_weights(n_in, n_out)
    out = []
    for o0 in range(0, n_out, block):
        o1 = min(n_out, o0 + block)
        cols = torch.nonzero(w[o0:o1].abs().sum(0)).flatten()
        i0, i1 = int(cols[0]), int(cols[-1]) + 1
        part = w[o0:o1, i0:i1]
        out.append((o0, o1, i0, i1, (part.t() if transposed else part).contiguous()))
    return tuple(out)


def parallel_safe() -> bool:
    """True when torch runs single-threaded here, so that :func:`frame_pixels` may run in
    several threads at once without each starting its own team of intra-op threads."""
    return torch.get_num_threads() == 1


def frame_pixels(frame: RGBArray, size: int) -> torch.Tensor:
    """One RGB ``uint8`` ``(H, W, 3)`` frame -> ``(3, size, size)`` float32 on the CPU
    (the module docstring's contract)."""
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected (H, W, 3) uint8, got {frame.shape} {frame.dtype}")
    h, w, _ = frame.shape
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(frame).astype(np.float32)).view(h, w * 3)
        # vertical pass on the interleaved rows: (size, H) @ (H, W * 3)
        y = torch.empty(size, w * 3)
        for o0, o1, i0, i1, wy in axis_blocks(h, size, False):
            torch.mm(wy, x[i0:i1], out=y[o0:o1])
        # channels first, then the horizontal pass: (3 * size, W) @ (W, size)
        y = y.view(size, w, 3).permute(2, 0, 1).reshape(3 * size, w)
        out = torch.empty(3 * size, size)
        for o0, o1, i0, i1, wx in axis_blocks(w, size, True):
            out[:, o0:o1] = torch.mm(y[:, i0:i1], wx)
        return out.view(3, size, size).div_(255.0)
