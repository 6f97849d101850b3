"""Preprocessing and frame embedding (SPEC sections 2 and 3).

Contract:

* :func:`preprocess` turns RGB ``uint8`` frames into the model input:
  float32 / 255, bicubic resize with antialiasing to 224 x 224, no crop, no
  mean/std normalisation unless asked.
* With a runtime backend on the CPU and torch's intra-op threads at 1 (the composition
  roots set it: torch then only prepares pixels), RGB frames are resized one at a time by
  :func:`monitor.core.resize.frame_pixels` (the same function as :func:`preprocess`
  within float32 rounding, about a third of its CPU time), and :meth:`Embedder.prepare`
  offers that per frame to callers that prepare frames in parallel threads (the
  streaming engine's conversion threads); :meth:`Embedder.embed_tensor` takes such
  prepared ``(3, S, S)`` tensors beside RGB frames and YUV planes.
* :class:`Embedder` runs a frozen :class:`~monitor.core.backbone.Backbone` (loaded by
  :func:`~monitor.core.backbone.load_backbone`) under ``torch.inference_mode`` in
  batches and returns, per frame, the final LayerNorm output of ALL tokens (CLS +
  256 patches [+ registers]) flattened: 257 x 384 = 98,688 values for ViT-S/14.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from ..media.colour import YUVPlanes, planes_to_pixels
from ..types import RGBArray
from .backbone import Backbone, CompileMode
from .resize import frame_pixels, parallel_safe

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _buckets(batch_size: int) -> tuple[int, ...]:
    """Powers of two below ``batch_size``, then ``batch_size``: the padded batch sizes."""
    sizes = {batch_size}
    b = 1
    while b < batch_size:
        sizes.add(b)
        b *= 2
    return tuple(sorted(sizes))


PREPROCESS_CHUNK_BYTES = 128 * 1024**2
"""float32 bytes :func:`preprocess` converts at once (at least one frame)."""


def preprocess(
    frames: Sequence[RGBArray],
    image_size: int = 224,
    device: torch.device | str = "cpu",
    normalize: Literal["none", "imagenet"] = "none",
) -> torch.Tensor:
    """RGB uint8 ``(H, W, 3)`` frames -> float32 ``(N, 3, S, S)`` on ``device``.

    float32 / 255, then bicubic resize with antialiasing to S x S (aspect ratio
    not kept, no crop). Frames of one size are resized together; uint8 is moved
    to the device before conversion (4x less to copy).
    """
    if not frames:
        return torch.empty(0, 3, image_size, image_size, device=device)
    out = torch.empty(len(frames), 3, image_size, image_size, device=device)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, f in enumerate(frames):
        if f.ndim != 3 or f.shape[2] != 3 or f.dtype != np.uint8:
            raise ValueError(f"frame {i}: expected (H, W, 3) uint8, got {f.shape} {f.dtype}")
        groups.setdefault(f.shape, []).append(i)
    for shape, group in groups.items():
        # large frames go a few at a time: the float32 copy is 4x the frame, and a batch
        # of 4096 x 4096 frames would need gigabytes (each frame is resized on its own,
        # so the chunking does not change the result)
        per_frame = 4 * shape[0] * shape[1] * shape[2]
        step = max(1, PREPROCESS_CHUNK_BYTES // per_frame)
        for start in range(0, len(group), step):
            idx = group[start : start + step]
            arr = frames[idx[0]][None] if len(idx) == 1 else np.stack([frames[i] for i in idx])
            x = torch.from_numpy(arr).to(device).permute(0, 3, 1, 2).float().div_(255.0)
            if shape[:2] != (image_size, image_size):
                x = F.interpolate(
                    x,
                    size=(image_size, image_size),
                    mode="bicubic",
                    antialias=True,
                    align_corners=False,
                )
            out[torch.tensor(idx, device=device)] = x
            del x
    return _normalise(out, normalize)


def _normalise(x: torch.Tensor, normalize: Literal["none", "imagenet"]) -> torch.Tensor:
    if normalize == "imagenet":
        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std
    return x


class Embedder:
    """Frames in, flattened all-token embeddings out (implements ``FrameEmbedder``).

    Runs ``batch_size`` frames per forward pass under ``torch.inference_mode``;
    the geometry downstream is float64 whatever ``dtype`` the model runs in.
    Not thread-safe: one thread owns an Embedder and its device.

    ``runner`` (from :mod:`monitor.core.backends`) replaces the torch call: ``(N, 3, S, S)``
    float32 pixels -> ``(N, tokens, hidden)`` float32 final-LayerNorm states of an
    exported graph of the same backbone; the output contract does not change.
    """

    def __init__(
        self,
        backbone: Backbone,
        batch_size: int = 8,
        normalize: Literal["none", "imagenet"] = "none",
        compile: CompileMode = "off",
        runner: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.backbone = backbone
        self.runner = runner
        self.backend = "torch" if runner is None else "runtime"
        """Which runtime computes the forward (set by
        :func:`monitor.core.backends.make_embedder`)."""
        self.backend_mode = backbone.precision
        """Its precision: the torch dtype name, or the runtime's mode."""
        self.batch_size = batch_size
        self.normalize = normalize
        self.compile = compile
        self._model: Any = backbone.model
        if compile != "off":
            self._model = torch.compile(backbone.model, mode=compile, dynamic=False)
        # fixed batch sizes under torch.compile: each compiles (and graphs) once
        self._buckets = _buckets(batch_size) if compile != "off" else ()

    @property
    def embedding_dim(self) -> int:
        """D = tokens x hidden size."""
        return self.backbone.embedding_dim

    @property
    def device(self) -> torch.device:
        """Where the model and the returned tensors live."""
        return self.backbone.device

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """The bare model call: ``(N, 3, S, S)`` -> ``(N, D)`` float32, one pass (under
        autocast for the mixed precisions; padded to a fixed batch size when compiled)."""
        n = pixels.shape[0]
        if self.runner is not None:
            return self.runner(pixels).reshape(n, -1).float()
        if self._buckets:
            size = next((b for b in self._buckets if b >= n), n)
            if size > n:
                pixels = torch.cat([pixels, pixels[-1:].expand(size - n, -1, -1, -1)])
        bb = self.backbone
        with torch.inference_mode(), torch.autocast(
            bb.device.type, dtype=bb.autocast or torch.float32, enabled=bb.autocast is not None
        ):
            out = self._model(pixel_values=pixels.to(bb.dtype))
            hidden: torch.Tensor = out.last_hidden_state[:n]
            return hidden.reshape(n, -1).float()

    @property
    def prepares_frames(self) -> bool:
        """True when :meth:`prepare` is the cheap per-frame path and may run in several
        threads at once: a runtime backend (torch's own forward keeps :func:`preprocess`)
        on the CPU with torch single-threaded (:func:`~monitor.core.resize.parallel_safe`);
        the caller's threads must then run torch single-threaded too
        (``torch.set_num_threads(1)`` in each)."""
        return self.runner is not None and self.device.type == "cpu" and parallel_safe()

    def prepare(self, frame: RGBArray) -> torch.Tensor:
        """One RGB frame -> its ``(3, S, S)`` model input on the CPU, unnormalised (SPEC
        section 2; :func:`~monitor.core.resize.frame_pixels`). Thread-safe."""
        return frame_pixels(frame, self.backbone.image_size)

    def pixels(self, frames: Sequence[RGBArray | YUVPlanes | torch.Tensor]) -> torch.Tensor:
        """Model input ``(N, 3, S, S)`` on the device for RGB frames, YUV planes
        (converted on the device by :func:`monitor.media.colour.planes_to_pixels`) and/or
        frames already through :meth:`prepare`."""
        size, dev = self.backbone.image_size, self.device
        if self.prepares_frames and all(not isinstance(f, YUVPlanes) for f in frames):
            ready = [f if isinstance(f, torch.Tensor) else self.prepare(f)  # type: ignore[arg-type]
                     for f in frames]
            if not ready:
                return torch.empty(0, 3, size, size)
            return _normalise(torch.stack(ready), self.normalize)
        if any(isinstance(f, torch.Tensor) for f in frames):
            raise ValueError("prepared pixels are accepted only where prepares_frames is True")
        yuv = [i for i, f in enumerate(frames) if isinstance(f, YUVPlanes)]
        if not yuv:
            return preprocess(frames, size, dev, self.normalize)  # type: ignore[arg-type]
        planes = [frames[i] for i in yuv]
        px = _normalise(planes_to_pixels(planes, size, dev), self.normalize)  # type: ignore[arg-type]
        if len(yuv) == len(frames):
            return px
        out = torch.empty(len(frames), 3, size, size, device=dev)
        out[torch.tensor(yuv, device=dev)] = px
        rgb = [i for i, f in enumerate(frames) if not isinstance(f, YUVPlanes)]
        out[torch.tensor(rgb, device=dev)] = preprocess(
            [frames[i] for i in rgb], size, dev, self.normalize  # type: ignore[misc]
        )
        return out

    def embed_tensor(
        self, frames: Sequence[RGBArray | YUVPlanes | torch.Tensor]
    ) -> torch.Tensor:
        """Embed frames (RGB arrays, YUV planes and/or :meth:`prepare` d pixels);
        ``(N, D)`` float32 on the device."""
        chunks = []
        for i in range(0, len(frames), self.batch_size):
            part = frames[i : i + self.batch_size]
            with torch.inference_mode():
                chunks.append(self.forward(self.pixels(part)))
        if not chunks:
            return torch.empty(0, self.embedding_dim, device=self.device)
        return torch.cat(chunks)

    def embed(self, frames: Sequence[RGBArray]) -> npt.NDArray[np.float32]:
        """Embed frames; returns a ``(N, D)`` float32 numpy array on the host."""
        result: npt.NDArray[np.float32] = self.embed_tensor(frames).cpu().numpy()
        return result
