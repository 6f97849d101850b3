"""Still images of sampled frames: JPEG in and out, and the contact sheet of a window.

Contract: every function is pure (bytes and arrays in, bytes or arrays out) and uses
Pillow only; sizes are the caller's to bound. :func:`encode_jpeg` / :func:`decode_jpeg`
round-trip RGB ``uint8`` ``(H, W, 3)`` arrays; :func:`contact_sheet` lays frames out in a
grid, each labelled under it, and returns a JPEG.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from ..types import RGBArray

LABEL_PX = 14
"""Height of the label band under each tile of a contact sheet."""


def encode_jpeg(rgb: RGBArray, quality: int) -> bytes:
    """``rgb`` as JPEG bytes at ``quality`` (10-95)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb), "RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def decode_jpeg(data: bytes) -> RGBArray:
    """JPEG bytes as RGB ``uint8`` ``(H, W, 3)``; ValueError for bytes that are not one."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            rgb: RGBArray = np.asarray(im.convert("RGB"))
    except (OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"not a JPEG image: {exc}") from None
    return rgb


def contact_sheet(
    frames: Sequence[RGBArray], labels: Sequence[str], columns: int = 6, quality: int = 85
) -> bytes:
    """The frames in a grid of ``columns`` (row-major, in order), each tile the size of
    the first frame (others are resized to it) with its label in a band under it; JPEG."""
    if not frames or len(frames) != len(labels):
        raise ValueError("contact_sheet needs as many labels as frames, and at least one")
    h, w = frames[0].shape[:2]
    rows = -(-len(frames) // columns)
    sheet = Image.new("RGB", (columns * w, rows * (h + LABEL_PX)), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    for i, (rgb, label) in enumerate(zip(frames, labels)):
        tile = Image.fromarray(np.ascontiguousarray(rgb), "RGB")
        if tile.size != (w, h):
            tile = tile.resize((w, h))
        x, y = (i % columns) * w, (i // columns) * (h + LABEL_PX)
        sheet.paste(tile, (x, y))
        draw.text((x + 2, y + h + 1), label, fill=(255, 255, 255))
    buf = io.BytesIO()
    sheet.save(buf, "JPEG", quality=quality)
    return buf.getvalue()
