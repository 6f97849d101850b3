"""Backbone loading (transformers dir, torch.hub checkpoint file and cache dir), preprocessing
and the all-token embedding (SPEC sections 2-3), with tiny random DINOv2s built on disk."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from monitor.core.backbone import load_backbone
from monitor.core.embed import Embedder, preprocess
from monitor.errors import ModelError, ModelNotFound
from tests.conftest import TINY_HIDDEN, build_tiny_dinov2


def to_hub_layout(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a transformers Dinov2 state dict to the torch.hub (facebookresearch) layout.

    Written independently of monitor.core.embed (which maps the other way)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for k, v in hf_state.items():
        m = re.match(r"encoder\.layer\.(\d+)\.(.+)", k)
        if not m:
            name = {
                "embeddings.cls_token": "cls_token",
                "embeddings.position_embeddings": "pos_embed",
                "embeddings.mask_token": "mask_token",
                "embeddings.register_tokens": "register_tokens",
                "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
                "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
                "layernorm.weight": "norm.weight",
                "layernorm.bias": "norm.bias",
            }[k]
            out[name] = v.clone()
            continue
        i, rest = m.groups()
        qm = re.match(
            r"attention\.(?:attention\.)?(q_proj|k_proj|v_proj|query|key|value)\.(\w+)", rest
        )
        if qm:
            part = {
                "q_proj": "q",
                "query": "q",
                "k_proj": "k",
                "key": "k",
                "v_proj": "v",
                "value": "v",
            }[qm.group(1)]
            qkv.setdefault((i, qm.group(2)), {})[part] = v
            continue
        rest = (
            rest.replace("layer_scale1.lambda1", "ls1.gamma")
            .replace("layer_scale2.lambda1", "ls2.gamma")
            .replace("attention.o_proj", "attn.proj")
            .replace("attention.output.dense", "attn.proj")
        )
        out[f"blocks.{i}.{rest}"] = v.clone()
    for (i, kind), parts in qkv.items():
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def frames(n: int, h: int = 48, w: int = 64, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_all_token_embedding_width(tiny_embedder: Embedder) -> None:
    z = tiny_embedder.embed(frames(3))
    assert z.shape == (3, 257 * TINY_HIDDEN)
    assert z.dtype == np.float32
    assert np.isfinite(z).all()
    assert tiny_embedder.embedding_dim == 257 * TINY_HIDDEN


def test_embedding_is_final_layernorm_of_all_tokens(tiny_model_dir: Path) -> None:
    from transformers import AutoModel

    bb = load_backbone(str(tiny_model_dir), "cpu", pos_embed="transformers")
    emb = Embedder(bb, batch_size=2)
    fr = frames(2)
    ref_model = AutoModel.from_pretrained(str(tiny_model_dir)).eval()
    with torch.no_grad():
        x = preprocess(fr)
        hidden = ref_model(pixel_values=x, output_hidden_states=True).hidden_states[-1]
        want = ref_model.layernorm(hidden).reshape(2, -1).numpy()
    np.testing.assert_allclose(emb.embed(fr), want, rtol=1e-5, atol=1e-5)


def test_batching_does_not_change_embeddings(tiny_model_dir: Path) -> None:
    bb = load_backbone(str(tiny_model_dir), "cpu")
    fr = frames(5)
    a = Embedder(bb, batch_size=1).embed(fr)
    b = Embedder(bb, batch_size=5).embed(fr)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("registers", [0, 4])
def test_torchhub_checkpoint_file_and_cache_dir(tmp_path: Path, registers: int) -> None:
    from transformers import AutoModel

    hidden = 128  # 64-wide heads, as in every released DINOv2 (the .pth does not store heads)
    hf_dir = build_tiny_dinov2(
        tmp_path / "hf", hidden=hidden, heads=2, registers=registers, seed=registers + 1
    )
    hf = AutoModel.from_pretrained(str(hf_dir))
    state = to_hub_layout(hf.state_dict())
    assert "blocks.0.attn.qkv.weight" in state and "pos_embed" in state
    ckpt = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(state, ckpt)
    cache = tmp_path / "hubcache"
    (cache / "checkpoints").mkdir(parents=True)
    torch.save(state, cache / "checkpoints" / "dinov2_vits14_pretrain.pth")

    fr = frames(3, seed=5)
    ref = Embedder(load_backbone(str(hf_dir), "cpu"), batch_size=3).embed(fr)
    for source in (ckpt, cache):
        bb = load_backbone(str(source), "cpu")
        assert bb.source == "torchhub-checkpoint"
        assert bb.num_prefix_tokens == 1 + registers
        got = Embedder(bb, batch_size=3).embed(fr)
        assert got.shape == (3, (1 + registers + 256) * hidden)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_pickled_checkpoint_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("code ran",))

    bad = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, bad)
    with pytest.raises(ModelError, match="cannot read"):
        load_backbone(str(bad), "cpu")


def test_hub_id_offline_says_what_to_do() -> None:
    with pytest.raises(ModelNotFound, match="offline machine"):
        load_backbone("dinov2_vits14", "cpu")


def test_missing_local_path_and_empty_dir(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound):
        load_backbone(str(tmp_path / "nope.pth"), "cpu")
    with pytest.raises(ModelNotFound, match="neither"):
        load_backbone(str(tmp_path), "cpu")


def test_pos_embed_modes_differ_slightly(tiny_model_dir: Path) -> None:
    fr = frames(2, seed=9)
    hub = Embedder(load_backbone(str(tiny_model_dir), "cpu", pos_embed="torchhub")).embed(fr)
    tf = Embedder(load_backbone(str(tiny_model_dir), "cpu", pos_embed="transformers")).embed(fr)
    rel = np.linalg.norm(hub - tf) / np.linalg.norm(tf)
    assert 0 < rel < 0.5  # the resampling differs (offset 0.1, scale_factor) but not wildly


def test_bfloat16_close_to_float32(tiny_model_dir: Path) -> None:
    fr = frames(2, seed=3)
    f32 = Embedder(load_backbone(str(tiny_model_dir), "cpu")).embed(fr)
    bf16 = Embedder(load_backbone(str(tiny_model_dir), "cpu", dtype="bfloat16")).embed(fr)
    assert bf16.dtype == np.float32
    rel = np.linalg.norm(bf16 - f32) / np.linalg.norm(f32)
    assert 0 < rel < 0.1


def test_preprocess_scales_resizes_without_crop() -> None:
    grey = np.full((100, 300, 3), 51, dtype=np.uint8)
    x = preprocess([grey])
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    torch.testing.assert_close(x, torch.full_like(x, 0.2))
    half = np.zeros((90, 160, 3), dtype=np.uint8)
    half[:, :80, 0] = 255  # left half red: aspect ratio is not kept and nothing is cropped
    y = preprocess([half])[0]
    assert y[0, :, :100].mean() > 0.99 and y[0, :, 124:].mean() < 0.01
    exact = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    torch.testing.assert_close(
        preprocess([exact])[0], torch.from_numpy(exact).permute(2, 0, 1).float() / 255
    )


def test_preprocess_antialiases_downscaling() -> None:
    stripes = np.zeros((448, 448, 3), dtype=np.uint8)
    stripes[:, ::2] = 255  # 1 px stripes: antialiased downscale averages them to grey
    x = preprocess([stripes])[0]
    assert abs(float(x.mean()) - 0.5) < 0.02
    assert float(x.std()) < 0.05


def test_preprocess_imagenet_option() -> None:
    grey = np.full((224, 224, 3), 255, dtype=np.uint8)
    x = preprocess([grey], normalize="imagenet")
    assert x[0, 0, 0, 0].item() == pytest.approx((1 - 0.485) / 0.229, rel=1e-5)


@pytest.mark.parametrize("dtype", ["tf32", "float16-mixed", "bfloat16-mixed"])
def test_precisions_load_and_stay_close_to_float32(tiny_model_dir: Path, dtype: str) -> None:
    """Mixed precisions keep float32 weights and run matmuls in half precision (autocast);
    tf32 is float32 on the CPU. Each embeds close to float32 (drift figures: BENCHMARKS.md)."""
    fr = frames(2, seed=4)
    f32 = Embedder(load_backbone(str(tiny_model_dir), "cpu")).embed(fr)
    bb = load_backbone(str(tiny_model_dir), "cpu", dtype=dtype)
    assert bb.dtype == torch.float32
    assert bb.autocast == {"tf32": None, "float16-mixed": torch.float16,
                           "bfloat16-mixed": torch.bfloat16}[dtype]
    got = Embedder(bb).embed(fr)
    assert got.dtype == np.float32
    rel = np.linalg.norm(got - f32) / np.linalg.norm(f32)
    if dtype == "tf32":
        assert rel < 1e-6  # no TF32 on the CPU: the same float32 arithmetic
    else:
        assert 0 < rel < 0.1


def test_padding_to_fixed_batch_sizes_keeps_each_frames_embedding(tiny_model_dir: Path) -> None:
    """Compiled models see only a few batch sizes: padded rows never leak into results."""
    from monitor.core.embed import _buckets

    assert _buckets(24) == (1, 2, 4, 8, 16, 24)
    assert _buckets(1) == (1,)
    bb = load_backbone(str(tiny_model_dir), "cpu")
    fr = frames(5, seed=5)
    plain = Embedder(bb, batch_size=8).embed(fr)
    padded = Embedder(bb, batch_size=8)
    padded._buckets = _buckets(8)  # what compile="..." sets, without compiling on 2 cores
    np.testing.assert_allclose(padded.embed(fr), plain, rtol=1e-5, atol=1e-5)
    assert padded.embed_tensor(fr[:3]).shape[0] == 3


@pytest.mark.cuda
def test_compiled_model_with_cuda_graphs_matches_eager(tiny_model_dir: Path) -> None:
    bb = load_backbone(str(tiny_model_dir), "cuda")
    fr = frames(5, seed=6)
    eager = Embedder(bb, batch_size=8).embed(fr)
    graphs = Embedder(bb, batch_size=8, compile="reduce-overhead")
    for _ in range(3):  # warm-up records the graphs
        got = graphs.embed(fr)
    np.testing.assert_allclose(got, eager, rtol=1e-3, atol=1e-3)
