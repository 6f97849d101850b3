"""Shared fixtures: a tiny random DINOv2 saved to disk, test clips, a private redis-server.

Nothing here touches the network: the model is built from a Dinov2Config with
random weights and loaded back through the real loading code.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

SHARED_CLIPS = Path(__file__).resolve().parents[1].parent / "shared" / "clips"

TINY_HIDDEN = 32


def build_tiny_dinov2(directory: Path, hidden: int = TINY_HIDDEN, layers: int = 2,
                      registers: int = 0, seed: int = 0) -> Path:
    """Save a random DINOv2 (518 px pre-training grid, patch 14) in transformers layout."""
    from transformers import (
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
    )

    torch.manual_seed(seed)
    common = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                  mlp_ratio=2, image_size=518, patch_size=14)
    if registers:
        model = Dinov2WithRegistersModel(
            Dinov2WithRegistersConfig(num_register_tokens=registers, **common))
    else:
        model = Dinov2Model(Dinov2Config(**common))
    # the default init leaves layer scale at 1 and positions near 0; perturb so they matter
    with torch.no_grad():
        model.embeddings.position_embeddings.normal_(0.0, 0.5)
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random DINOv2 in a local transformers directory."""
    return build_tiny_dinov2(tmp_path_factory.mktemp("tiny-dinov2"))


@pytest.fixture(scope="session")
def tiny_embedder(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    """An Embedder on CPU over the tiny model (float32, batch 4)."""
    from monitor.embed import Embedder, load_backbone

    return Embedder(load_backbone(str(tiny_model_dir), "cpu"), batch_size=4)


@pytest.fixture(scope="session")
def shared_clips() -> Path:
    """The 16 real-world clips of ../shared/clips (skip if the folder is absent)."""
    if not (SHARED_CLIPS / "manifest.json").is_file():
        pytest.skip(f"{SHARED_CLIPS} not present")
    return SHARED_CLIPS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A private redis-server on a free port, for one test; its URL."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    port = _free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("redis-server did not start")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``cuda`` where no CUDA device exists."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
