"""Colour conversion and resizing on the model's device, from decoded YUV planes.

Contract:

* :func:`frame_planes` takes a decoded PyAV video frame (duck-typed: this
  module does not import ``av``) and returns its :class:`YUVPlanes`, a copy of
  its 8-bit 4:2:0 planes (1.5 bytes per pixel), or ``None`` for pixel formats
  this path does not cover (10-bit, 4:2:2, 4:4:4, RGB, palettes) and for odd
  widths or heights: the caller then uses the RGB path for that frame.
* :func:`planes_to_pixels` turns a batch of :class:`YUVPlanes` into the model
  input, ``(N, 3, S, S)`` float32 on ``device``: the planes are uploaded as
  ``uint8`` (never full-size RGB), chroma is upsampled by repetition (each
  chroma sample covers its 2 x 2 luma block, as FFmpeg's swscale does for a
  plain conversion), the BT.601 or BT.709 matrix of the frame's colour tag is
  applied in its limited or full range with FFmpeg's per-term truncation (so the
  8-bit levels equal the CPU path's ``rgb24`` frames), rotated for display, divided
  by 255 and resized to ``S x S`` bicubic with antialiasing, exactly as
  :func:`monitor.core.embed.preprocess` resizes RGB frames.
* :func:`planes_to_small_rgb` makes the small RGB image of one frame's planes where they
  are (a GPU decoder's frame on its GPU): the planes are box-averaged to the small size,
  converted there with the same tables, and only the small image is copied to the host
  (evidence and thumbnails of NVDEC streams, whose frames swscale cannot read).
* Equivalence with the CPU path (PyAV ``to_ndarray(format="rgb24")``, then
  ``preprocess``): the RGB levels are identical but for about 0.05 % of values
  that are one level off (measured on every 4:2:0 shared clip by
  ``tests/test_colour.py``), so the features agree to float rounding. A plain
  float conversion with one rounding would differ by up to 2 levels on most
  pixels (mean 0.6 level): swscale truncates each term separately.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
import torch.utils.dlpack

from ..types import RGBArray

Matrix = Literal["bt601", "bt709"]

# FFmpeg's AVColorSpace values that mean BT.709; everything else (unspecified,
# BT.470BG, SMPTE 170M, ...) converts with BT.601, as swscale does by default.
_BT709_COLORSPACES = frozenset({1})
_FULL_RANGE = 2  # AVCOL_RANGE_JPEG
_KR_KB: dict[str, tuple[float, float]] = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722)}
_PLANAR_420 = frozenset({"yuv420p", "yuvj420p"})

Plane = npt.NDArray[np.uint8] | torch.Tensor


@dataclass(frozen=True, slots=True)
class YUVPlanes:
    """One frame's 8-bit 4:2:0 planes: ``y`` is ``(H, W)``, ``u``/``v`` are
    ``(ceil(H/2), ceil(W/2))``; numpy on the host or tensors already on a device
    (a GPU decoder's output). ``rotation_deg`` is the counter-clockwise display
    rotation (0, 90, 180, 270)."""

    y: Plane
    u: Plane
    v: Plane
    matrix: Matrix = "bt601"
    full_range: bool = False
    rotation_deg: int = 0

    @property
    def key(self) -> tuple[int, int, str, bool, int]:
        """Frames with equal keys convert together in one batch."""
        return (int(self.y.shape[0]), int(self.y.shape[1]), self.matrix, self.full_range,
                self.rotation_deg)


def _plane(plane: Any, samples: int = 1) -> npt.NDArray[np.uint8]:
    """A PyAV plane as a contiguous ``(height, width * samples)`` uint8 copy (drops line
    padding; ``samples=2`` for NV12's interleaved chroma)."""
    rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
    return np.ascontiguousarray(rows[:, : plane.width * samples])


def _device_plane(plane: Any) -> torch.Tensor:
    """A plane of a CUDA hardware frame as a tensor on that device, without a copy.

    PyAV exports CUDA planes only without a stream argument (which ``torch.from_dlpack``
    would pass), so the capsule is taken directly."""
    return torch.utils.dlpack.from_dlpack(plane.__dlpack__())


def frame_planes(frame: Any) -> YUVPlanes | None:
    """The 4:2:0 planes of a decoded PyAV frame, or None when its format is not covered.

    Software frames give host copies; NVDEC frames (format ``cuda`` over ``nv12``) give
    views of the device memory they were decoded into."""
    fmt = frame.format.name
    hw = fmt == "cuda"
    if hw:
        sw = frame.sw_format
        fmt = sw.name if sw is not None else ""
    if fmt not in _PLANAR_420 and fmt != "nv12":
        return None
    if frame.width % 2 or frame.height % 2:
        # FFmpeg converts odd sizes through its scaler (interpolated chroma), not the
        # plain per-pixel path reproduced here: leave them to the RGB path
        return None
    colorspace = int(getattr(frame, "colorspace", 2) or 2)
    full = fmt == "yuvj420p" or int(getattr(frame, "color_range", 0) or 0) == _FULL_RANGE
    rotation = int(getattr(frame, "rotation", 0) or 0) % 360
    matrix: Matrix = "bt709" if colorspace in _BT709_COLORSPACES else "bt601"
    if hw:
        if fmt != "nv12":
            return None
        luma, chroma = (_device_plane(p) for p in frame.planes[:2])
        return YUVPlanes(luma, chroma[..., 0], chroma[..., 1], matrix, full, rotation)
    y = _plane(frame.planes[0])
    if fmt == "nv12":
        uv = _plane(frame.planes[1], samples=2)
        u, v = np.ascontiguousarray(uv[:, 0::2]), np.ascontiguousarray(uv[:, 1::2])
    else:
        u, v = _plane(frame.planes[1]), _plane(frame.planes[2])
    return YUVPlanes(y, u, v, matrix, full, rotation)


def _stack(planes: Sequence[Plane], device: torch.device) -> torch.Tensor:
    """One ``(N, h, w)`` uint8 tensor on ``device``: planes already there are stacked in
    place, host planes are stacked once, pinned and uploaded in one copy."""
    if all(isinstance(p, torch.Tensor) and p.device == device for p in planes):
        return torch.stack(planes)  # type: ignore[arg-type]
    host = torch.from_numpy(np.stack([np.asarray(p.cpu() if isinstance(p, torch.Tensor) else p)
                                      for p in planes]))
    if device.type == "cuda":
        host = host.pin_memory()
    return host.to(device, non_blocking=True)


@functools.lru_cache(maxsize=8)
def _tables(matrix: Matrix, full_range: bool) -> npt.NDArray[np.int16]:
    """Per-level contributions ``(5, 256)``: Y, R<-V, G<-U, G<-V, B<-U, each floored.

    swscale computes every term in fixed point and truncates each one before adding
    them; flooring each term of the exact matrix reproduces its rgb24 output to the
    level on all but about 0.05 % of values, which are one level off where its
    fixed-point coefficients land a product on the other side of an integer
    (``tests/test_colour.py``)."""
    kr, kb = _KR_KB[matrix]
    level = np.arange(256, dtype=np.float64)
    if full_range:
        y, c = level, level - 128.0
    else:
        y = (level - 16.0) * 255.0 / 219.0
        c = (level - 128.0) * 255.0 / 224.0
    crv, cbu = 2.0 * (1.0 - kr), 2.0 * (1.0 - kb)
    cgu, cgv = kb * cbu / (1.0 - kr - kb), kr * crv / (1.0 - kr - kb)
    # round the coefficient products first so that exact integers stay exact in binary
    terms = [y, crv * c, -cgu * c, -cgv * c, cbu * c]
    return np.stack([np.floor(np.round(t, 9)) for t in terms]).astype(np.int16)


def yuv_to_rgb(
    y: torch.Tensor, u: torch.Tensor, v: torch.Tensor, matrix: Matrix, full_range: bool
) -> torch.Tensor:
    """uint8 planes ``(N, H, W)``, ``(N, h, w)`` -> RGB levels ``(N, 3, H, W)`` float32
    in [0, 255]: the same levels as FFmpeg's rgb24 conversion (see :func:`_tables`)."""
    h, w = y.shape[-2:]
    lut = torch.from_numpy(_tables(matrix, full_range)).to(y.device)
    yi, ui, vi = y.long(), u.long(), v.long()
    # chroma terms on the subsampled planes (4x fewer lookups), then one upsampling
    chroma = torch.stack((lut[1][vi], lut[2][ui] + lut[3][vi], lut[4][ui]), dim=1)
    chroma = chroma.repeat_interleave(2, -2).repeat_interleave(2, -1)[..., :h, :w]
    rgb = lut[0][yi].unsqueeze(1) + chroma
    return rgb.clamp_(0, 255).float()


def planes_to_pixels(
    frames: Sequence[YUVPlanes], image_size: int, device: torch.device
) -> torch.Tensor:
    """Batch of planes -> model input ``(N, 3, S, S)`` float32 on ``device`` (see the
    module docstring). Frames of one size, matrix, range and rotation convert together."""
    out = torch.empty(len(frames), 3, image_size, image_size, device=device)
    groups: dict[tuple[int, int, str, bool, int], list[int]] = {}
    for i, f in enumerate(frames):
        groups.setdefault(f.key, []).append(i)
    for (_, _, matrix, full, rotation), idx in groups.items():
        part = [frames[i] for i in idx]
        y = _stack([f.y for f in part], device)
        u = _stack([f.u for f in part], device)
        v = _stack([f.v for f in part], device)
        x = yuv_to_rgb(y, u, v, matrix, full)  # type: ignore[arg-type]
        if rotation:
            x = torch.rot90(x, k=rotation // 90, dims=(2, 3))
        x = x.div_(255.0)
        if tuple(x.shape[-2:]) != (image_size, image_size):
            x = F.interpolate(
                x, size=(image_size, image_size), mode="bicubic", antialias=True,
                align_corners=False,
            )
        out[torch.tensor(idx, device=device)] = x
    return out


def small_size(width_in: int, height_in: int, width: int) -> tuple[int, int]:
    """The ``(w, h)`` of a frame shrunk to at most ``width`` px wide: both even, aspect
    kept (as :func:`~monitor.media.decode.frame_to_small_rgb` sizes it)."""
    w = max(2, min(width, width_in) // 2 * 2)
    return w, max(2, round(height_in * w / max(1, width_in) / 2) * 2)


def planes_to_small_rgb(planes: YUVPlanes, width: int) -> RGBArray:
    """One frame's planes, wherever they are (host numpy, or tensors on a GPU), as RGB
    ``uint8`` ``(h, w, 3)`` on the host at most ``width`` px wide (even sizes, aspect
    kept, then rotated for display). Luma is box-averaged (``area``) to ``(h, w)`` and
    chroma to ``(h/2, w/2)`` on the planes' device, converted there by
    :func:`yuv_to_rgb`; the full-size RGB is never made and only the small image crosses
    to the host (a few hundred KB a second for a thumbnail, not a 1080p frame)."""
    y, u, v = (p if isinstance(p, torch.Tensor) else torch.from_numpy(np.asarray(p))
               for p in (planes.y, planes.u, planes.v))
    h_in, w_in = int(y.shape[-2]), int(y.shape[-1])
    w, h = small_size(w_in, h_in, width)
    with torch.inference_mode():
        luma = F.interpolate(y.float()[None, None], size=(h, w), mode="area")
        chroma = F.interpolate(torch.stack((u, v)).float()[None], size=(h // 2, w // 2),
                               mode="area")
        y8 = luma[0].round_().to(torch.uint8)
        u8, v8 = chroma[0].round_().to(torch.uint8)
        rgb = yuv_to_rgb(y8, u8[None], v8[None], planes.matrix, planes.full_range)
        if planes.rotation_deg:
            rgb = torch.rot90(rgb, k=planes.rotation_deg // 90, dims=(2, 3))
        small: RGBArray = rgb[0].to(torch.uint8).permute(1, 2, 0).contiguous().cpu().numpy()
    return small
