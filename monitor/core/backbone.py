"""Loading the frozen DINOv2 backbone (SPEC section 3).

Contract:

* :func:`load_backbone` accepts a Hugging Face id (``facebook/dinov2-small``), a
  torch.hub name (``dinov2_vits14``, mapped to its Hugging Face id), a local
  transformers directory (``config.json`` + weights), a torch.hub checkpoint file
  in the ``dinov2_vits14_pretrain.pth`` layout, or a directory holding one (the
  torch.hub cache layout, ``checkpoints/*.pth``). Checkpoints load with
  ``torch.load(weights_only=True)``: no code runs from an artifact. A torch.hub
  state dict is renamed onto the transformers module layout
  (:func:`hub_state_to_transformers`).
* The result, :class:`Backbone`, is the model in eval mode without gradients, on
  its device and in its precision (:data:`DTYPES`), with what embedding needs to
  know of it (hidden size, patch size, prefix tokens, image size).

Position embeddings: by default the 37 x 37 pre-training grid is resampled to the
16 x 16 input grid once, at load time, the way the torch.hub implementation does
(bicubic with ``scale_factor = (16 + 0.1) / 37``, as the official ReStraV code
runs it); ``pos_embed="transformers"`` keeps the transformers resampling
(bicubic to an exact size). Both are offered so their difference can be
measured (see BENCHMARKS.md).
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ..errors import ConfigError, ModelError, ModelNotFound

HUB_NAMES: dict[str, str] = {
    "dinov2_vits14": "facebook/dinov2-small",
    "dinov2_vitb14": "facebook/dinov2-base",
    "dinov2_vitl14": "facebook/dinov2-large",
    "dinov2_vitg14": "facebook/dinov2-giant",
    "dinov2_vits14_reg": "facebook/dinov2-with-registers-small",
    "dinov2_vitb14_reg": "facebook/dinov2-with-registers-base",
    "dinov2_vitl14_reg": "facebook/dinov2-with-registers-large",
    "dinov2_vitg14_reg": "facebook/dinov2-with-registers-giant",
}
"""torch.hub model names and their Hugging Face equivalents."""


def same_backbone(a: str, b: str) -> bool:
    """True when two model references name the same published weights
    (``dinov2_vits14`` and ``facebook/dinov2-small`` do)."""
    return HUB_NAMES.get(a, a) == HUB_NAMES.get(b, b)

HUB_INTERPOLATE_OFFSET = 0.1
"""torch.hub DINOv2 adds this to the target grid size when resampling position embeddings."""

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "tf32": torch.float32,
    "float16-mixed": torch.float32,
    "bfloat16-mixed": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
"""Model precision name -> the dtype the weights are stored in."""

AUTOCAST: dict[str, torch.dtype] = {
    "float16-mixed": torch.float16,
    "bfloat16-mixed": torch.bfloat16,
}
"""Mixed precisions: autocast runs matmuls in this dtype, LayerNorm and softmax in float32."""

PosEmbedMode = Literal["torchhub", "transformers"]
CompileMode = Literal["off", "default", "reduce-overhead", "max-autotune"]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; other names are checked."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for but CUDA is not available; use cpu")
    return dev


@dataclass
class Backbone:
    """A loaded, frozen DINOv2 and what is known about it."""

    model: torch.nn.Module
    ref: str
    source: str
    hidden_size: int
    patch_size: int
    num_prefix_tokens: int
    device: torch.device
    dtype: torch.dtype
    image_size: int
    pos_embed: PosEmbedMode
    precision: str = "float32"

    @property
    def autocast(self) -> torch.dtype | None:
        """The autocast dtype of a mixed precision, else None."""
        return AUTOCAST.get(self.precision)

    @property
    def tokens(self) -> int:
        """Tokens per frame: prefix (CLS [+ registers]) + patches."""
        return self.num_prefix_tokens + (self.image_size // self.patch_size) ** 2

    @property
    def embedding_dim(self) -> int:
        """D, the flattened width of one frame's embedding."""
        return self.tokens * self.hidden_size


def _hub_key_map(hub_key: str, target_keys: set[str]) -> list[tuple[str, slice | None]]:
    """Map one torch.hub DINOv2 key to transformers keys (with an optional row slice)."""
    simple = {
        "cls_token": "embeddings.cls_token",
        "pos_embed": "embeddings.position_embeddings",
        "mask_token": "embeddings.mask_token",
        "register_tokens": "embeddings.register_tokens",
        "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
        "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
        "norm.weight": "layernorm.weight",
        "norm.bias": "layernorm.bias",
    }
    if hub_key in simple:
        return [(simple[hub_key], None)]
    m = re.fullmatch(r"blocks\.(?:\d+\.)?(\d+)\.(.+)", hub_key)
    if m is None:
        raise ModelError(f"unexpected key {hub_key!r} in torch.hub checkpoint")
    i, rest = m.group(1), m.group(2)
    p = f"encoder.layer.{i}."
    # transformers renamed the attention projections in v5; accept both layouts
    new_style = f"{p}attention.q_proj.weight" in target_keys
    q, k, v, o = (
        ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj")
        if new_style
        else (
            "attention.attention.query",
            "attention.attention.key",
            "attention.attention.value",
            "attention.output.dense",
        )
    )
    fixed = {
        "ls1.gamma": "layer_scale1.lambda1",
        "ls2.gamma": "layer_scale2.lambda1",
        "mlp.w12.weight": "mlp.weights_in.weight",
        "mlp.w12.bias": "mlp.weights_in.bias",
        "mlp.w3.weight": "mlp.weights_out.weight",
        "mlp.w3.bias": "mlp.weights_out.bias",
        "attn.proj.weight": f"{o}.weight",
        "attn.proj.bias": f"{o}.bias",
    }
    if rest in fixed:
        return [(p + fixed[rest], None)]
    qkv = re.fullmatch(r"attn\.qkv\.(weight|bias)", rest)
    if qkv:
        kind = qkv.group(1)
        return [(f"{p}{name}.{kind}", None) for name in (q, k, v)]  # split by caller
    if re.fullmatch(r"(norm1|norm2|mlp\.fc1|mlp\.fc2)\.(weight|bias)", rest):
        return [(p + rest, None)]
    raise ModelError(f"unexpected key {hub_key!r} in torch.hub checkpoint")


def _config_from_hub_state(state: dict[str, torch.Tensor]) -> tuple[Any, bool]:
    """Infer a transformers config from a torch.hub state dict's shapes."""
    from transformers import Dinov2Config, Dinov2WithRegistersConfig

    try:
        hidden = int(state["cls_token"].shape[-1])
        patch = int(state["patch_embed.proj.weight"].shape[-1])
        n_pos = int(state["pos_embed"].shape[1]) - 1
    except KeyError as exc:
        raise ModelError(f"not a DINOv2 torch.hub checkpoint: missing {exc}") from exc
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(?:\d+\.)?(\d+)\.", k))}
    depth = max(blocks) + 1 if blocks else 0
    swiglu = any(".mlp.w12." in k for k in state)
    mlp_ratio: float = 4
    if not swiglu:
        fc1 = next(v for k, v in state.items() if k.endswith("mlp.fc1.weight"))
        ratio = fc1.shape[0] / hidden
        # transformers 5 validates mlp_ratio as an int; every released DINOv2 has 4
        mlp_ratio = int(ratio) if ratio.is_integer() else ratio
    grid = round(math.sqrt(n_pos))
    common: dict[str, Any] = dict(
        hidden_size=hidden,
        num_hidden_layers=depth,
        num_attention_heads=max(1, hidden // 64),
        mlp_ratio=mlp_ratio,
        patch_size=patch,
        image_size=grid * patch,
        use_swiglu_ffn=swiglu,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
    )
    if "register_tokens" in state:
        cfg = Dinov2WithRegistersConfig(
            num_register_tokens=int(state["register_tokens"].shape[1]), **common
        )
        return cfg, True
    return Dinov2Config(**common), False


def hub_state_to_transformers(
    state: dict[str, torch.Tensor], target_keys: set[str]
) -> dict[str, torch.Tensor]:
    """Rename a torch.hub DINOv2 state dict onto the transformers module layout."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        targets = _hub_key_map(key, target_keys)
        if len(targets) == 3:
            for (name, _), part in zip(targets, value.chunk(3, dim=0)):
                out[name] = part.clone()
        else:
            out[targets[0][0]] = value
    if "embeddings.mask_token" in out and out["embeddings.mask_token"].dim() == 3:
        out["embeddings.mask_token"] = out["embeddings.mask_token"].reshape(1, -1)
    return out


def _find_hub_checkpoint(directory: Path) -> Path | None:
    found = sorted(directory.glob("*.pth")) + sorted(directory.glob("checkpoints/*.pth"))
    return found[0] if found else None


_VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".ts", ".y4m",
                             ".gif", ".flv", ".mpg", ".mpeg"})


def _looks_like_torch_save(path: Path) -> bool:
    """Whether ``path`` starts as ``torch.save`` writes: a zip archive (PyTorch >= 1.6)
    or a pickle (the legacy format: protocol 2+ opcode ``0x80``)."""
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head.startswith((b"PK\x03\x04", b"\x80"))


def _load_hub_checkpoint(path: Path) -> tuple[torch.nn.Module, str]:
    from transformers import Dinov2Model, Dinov2WithRegistersModel

    if not _looks_like_torch_save(path):
        raise ModelError(
            f"{path}: not a model (neither a PyTorch checkpoint nor a transformers "
            "directory); --model / model.ref takes a DINOv2 name, a directory or a .pth file"
            + (", and clips are the inputs" if path.suffix.lower() in _VIDEO_SUFFIXES else "")
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # boundary: any unreadable checkpoint becomes a ModelError
        # torch's own message advises weights_only=False (running the file's code): never
        # passed on; the exception type says enough
        raise ModelError(
            f"cannot read torch.hub checkpoint {path} ({type(exc).__name__}): only plain "
            "tensors are loaded from a checkpoint, never code; re-save it as a state dict"
        ) from exc
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ModelError(f"{path}: expected a state dict")
    cfg, registers = _config_from_hub_state(state)
    model: torch.nn.Module = (Dinov2WithRegistersModel if registers else Dinov2Model)(cfg)
    mapped = hub_state_to_transformers(state, set(model.state_dict()))
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    if unexpected or [m for m in missing if "mask_token" not in m]:
        raise ModelError(
            f"{path}: checkpoint does not fit DINOv2 (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})"
        )
    return model, "torchhub-checkpoint"


def _load_transformers(ref: str, local: bool) -> torch.nn.Module:
    from safetensors import SafetensorError
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    if not sys.stderr.isatty():  # no "Loading weights" bar in logs and pipes
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        model: torch.nn.Module = AutoModel.from_pretrained(ref, local_files_only=local)
    except SafetensorError as exc:
        raise ModelError(
            f"cannot load model {ref!r}: its weights file is damaged ({exc}); a truncated "
            "download? Download it again (README: 'DINOv2 weights on an offline machine')."
        ) from exc
    except OSError as exc:
        raise ModelNotFound(
            f"cannot load model {ref!r}: {exc}. Offline? Copy a Hugging Face snapshot of "
            "facebook/dinov2-small (config.json + model.safetensors) or the torch.hub file "
            "dinov2_vits14_pretrain.pth to this machine and pass its path with --model "
            "(see README: 'DINOv2 weights on an offline machine')."
        ) from exc
    return model


def hub_resampled_pos_embed(pos: torch.Tensor, grid: int, prefix: int = 1) -> torch.Tensor:
    """Resample a ``(1, prefix + M*M, C)`` position table to ``grid x grid`` as torch.hub does."""
    cls_pos, patch_pos = pos[:, :prefix], pos[:, prefix:]
    m = round(math.sqrt(patch_pos.shape[1]))
    dim = pos.shape[-1]
    scale = (grid + HUB_INTERPOLATE_OFFSET) / m
    x = patch_pos.reshape(1, m, m, dim).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, scale_factor=(scale, scale), mode="bicubic", antialias=False)
    if x.shape[-2:] != (grid, grid):
        raise ModelError(f"position grid resampled to {tuple(x.shape[-2:])}, expected {grid}")
    x = x.permute(0, 2, 3, 1).reshape(1, grid * grid, dim).to(pos.dtype)
    return torch.cat((cls_pos, x), dim=1)


def _apply_hub_pos_embed(model: torch.nn.Module, grid: int) -> None:
    emb: Any = model.embeddings
    pos: torch.Tensor = emb.position_embeddings
    if pos.shape[1] - 1 == grid * grid:
        return
    new = hub_resampled_pos_embed(pos.data, grid)
    emb.position_embeddings = torch.nn.Parameter(new, requires_grad=False)


def load_backbone(
    ref: str,
    device: str | torch.device = "auto",
    dtype: str = "float32",
    image_size: int = 224,
    pos_embed: PosEmbedMode = "torchhub",
) -> Backbone:
    """Load a frozen DINOv2 from ``ref`` (see the module docstring) onto ``device``."""
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    dev = resolve_device(device) if isinstance(device, str) else device
    path = Path(ref).expanduser()
    if path.is_file():
        model, source = _load_hub_checkpoint(path)
    elif path.is_dir():
        if (path / "config.json").is_file():
            model, source = _load_transformers(str(path), local=True), "transformers-dir"
        elif (ckpt := _find_hub_checkpoint(path)) is not None:
            model, source = _load_hub_checkpoint(ckpt)
        else:
            raise ModelNotFound(
                f"{path}: neither a transformers directory (config.json) nor a torch.hub "
                "cache (*.pth or checkpoints/*.pth)"
            )
    elif ref.startswith((".", "/", "~")) or ref.endswith((".pth", ".pt")):
        raise ModelNotFound(f"{ref}: no such file or directory")
    else:
        model, source = _load_transformers(HUB_NAMES.get(ref, ref), local=False), "hub"
    cfg: Any = model.config
    if getattr(cfg, "model_type", "") not in ("dinov2", "dinov2_with_registers"):
        raise ModelError(f"{ref}: model type {getattr(cfg, 'model_type', '?')!r} is not DINOv2")
    patch = int(cfg.patch_size)
    if image_size % patch:
        raise ConfigError(f"image_size {image_size} is not a multiple of the patch size {patch}")
    if pos_embed == "torchhub":
        _apply_hub_pos_embed(model, image_size // patch)
    prefix = 1 + int(getattr(cfg, "num_register_tokens", 0) or 0)
    model.eval().requires_grad_(False)
    model.to(device=dev, dtype=DTYPES[dtype])
    if dtype == "tf32" and dev.type == "cuda":
        # process-wide: one model per process, and only this precision asks for it
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Backbone(
        model=model,
        ref=ref,
        source=source,
        hidden_size=int(cfg.hidden_size),
        patch_size=patch,
        num_prefix_tokens=prefix,
        device=dev,
        dtype=DTYPES[dtype],
        image_size=image_size,
        pos_embed=pos_embed,
        precision=dtype,
    )


