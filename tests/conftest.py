"""Shared fixtures: a tiny random DINOv2 saved to disk, test clips, a private redis-server.

Nothing here touches the network: the model is built from a Dinov2Config with
random weights and loaded back through the real loading code.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import torch
from hypothesis import Phase, settings

SHARED_CLIPS = Path(
    os.environ.get("RESTRAV_SHARED_CLIPS")
    or Path(__file__).resolve().parents[1].parent / "shared" / "clips"
)
"""../shared/clips beside the checkout, or RESTRAV_SHARED_CLIPS (a machine without it)."""

TINY_HIDDEN = 32


def build_tiny_dinov2(
    directory: Path,
    hidden: int = TINY_HIDDEN,
    layers: int = 2,
    registers: int = 0,
    seed: int = 0,
    heads: int = 2,
) -> Path:
    """Save a random DINOv2 (518 px pre-training grid, patch 14) in transformers layout.

    Released DINOv2 checkpoints all have 64-wide heads; torch.hub files do not
    store the head count, so a model meant to round-trip through that layout
    needs ``hidden == 64 * heads``."""
    from transformers import (
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
    )

    torch.manual_seed(seed)
    common = dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        mlp_ratio=2,
        image_size=518,
        patch_size=14,
    )
    if registers:
        model = Dinov2WithRegistersModel(
            Dinov2WithRegistersConfig(num_register_tokens=registers, **common)
        )
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
    from monitor.core.backbone import load_backbone
    from monitor.core.embed import Embedder

    return Embedder(load_backbone(str(tiny_model_dir), "cpu"), batch_size=4)


CLIPS_MISSING = "the real-world clips are absent"
"""In the reason of every test skipped for want of the shared clips (summarised at the end)."""


@pytest.fixture(scope="session")
def shared_clips() -> Path:
    """The 16 real-world clips of ../shared/clips (skip if the folder is absent; the
    session's summary then names the skipped tests and how to get the clips)."""
    if not (SHARED_CLIPS / "manifest.json").is_file():
        pytest.skip(f"{CLIPS_MISSING}: {SHARED_CLIPS} not present")
    return SHARED_CLIPS


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A private redis-server on a free port, for one test; its URL."""
    from tests.redisproc import RedisProcess

    server = RedisProcess(tmp_path)
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[object]:
    """A private Redis Cluster (3 primaries, 3 replicas, password ``hunter2``) for one
    test: a :class:`tests.clusterproc.ClusterSetup`."""
    from tests.clusterproc import ClusterSetup
    from tests.sentinelproc import started

    with started(ClusterSetup(tmp_path / "cluster", password="hunter2")) as setup:
        yield setup


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A queue client (``monitor.queue.connect``) to the test's private redis-server."""
    from monitor.queue import connect

    c = connect(redis_url)
    yield c
    c.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``cuda`` where no CUDA device exists."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One loud line when tests were skipped for want of the shared clips: a clone
    outside this workspace runs without them, and those skips must not go unseen."""
    skipped = [r.nodeid for r in terminalreporter.stats.get("skipped", [])
               if CLIPS_MISSING in str(getattr(r, "longrepr", ""))]
    if skipped:
        terminalreporter.write_line(
            f"SHARED CLIPS MISSING: {len(skipped)} tests skipped ({', '.join(skipped)}): "
            f"no clips at {SHARED_CLIPS}; get them with `.venv/bin/python "
            "scripts/fetch_clips.py` (the 16 clips of tests/clips.json, each checked by its "
            "sha256) or point RESTRAV_SHARED_CLIPS at a copy",
            yellow=True, bold=True,
        )


# scripts/mutation.sh runs pytest with --hypothesis-profile=mutation: a failing example
# ends the test at once instead of being shrunk (shrinking made killed mutants time out)
settings.register_profile(
    "mutation", phases=[Phase.explicit, Phase.reuse, Phase.generate], deadline=None
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
