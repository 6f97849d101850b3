"""The wheel users install (`pip install .`, the Docker image) holds every module and asset.

Built from a copy of the tree with the project's own build backend, no network: a
subpackage missing from pyproject's package list would leave `restrav worker` failing
with ModuleNotFoundError in the image while every test run from the checkout passes.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _tracked(top: str) -> set[str]:
    """Files of the project's packages, as the wheel should name them."""
    out = subprocess.run(
        ["git", "ls-files", top], cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()
    if not out:  # not a git checkout (an sdist): walk the tree instead
        out = [str(p.relative_to(ROOT)) for p in (ROOT / top).rglob("*") if p.is_file()]
    return {f for f in out if "__pycache__" not in f and not f.endswith(".pyc")}


def test_wheel_holds_every_module_and_static_asset(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("monitor", "workers"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "-q", "-w", str(tmp_path / "dist"), str(src)],
        check=True, capture_output=True, timeout=240,
    )
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    want = _tracked("monitor") | _tracked("workers")
    assert "monitor/queue/worker.py" in want  # the subpackage that was once left out
    assert sorted(want - names) == []
    # and nothing from outside the packages (tests, bench) rides along
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {
        "monitor", "workers",
    }
