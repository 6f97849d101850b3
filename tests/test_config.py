"""Settings: YAML file < environment < explicit overrides; unknown keys are errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.config import load_settings
from monitor.errors import ConfigError


def test_defaults_follow_the_spec() -> None:
    s = load_settings()
    assert s.model.ref == "facebook/dinov2-small"
    assert s.model.dtype == "float32" and s.model.image_size == 224
    assert s.model.normalize == "none"


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("model:\n  device: cpu\n  batch_size: 4\ndecode:\n  max_file_bytes: 1000\n")
    monkeypatch.setenv("RESTRAV_MODEL__BATCH_SIZE", "16")
    s = load_settings(f, model={"dtype": "bfloat16"})
    assert s.model.device == "cpu"  # file
    assert s.model.batch_size == 16  # env beats file
    assert s.model.dtype == "bfloat16"  # override
    assert s.decode.max_file_bytes == 1000


def test_unknown_and_invalid_keys_are_errors(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text("model:\n  devcie: cpu\n")
    with pytest.raises(ConfigError, match="devcie"):
        load_settings(f)
    f.write_text("model:\n  batch_size: 0\n")
    with pytest.raises(ConfigError, match="batch_size"):
        load_settings(f)
    f.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(f)
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml")
