"""The folder listing is the architecture: monitor/ holds the shared base and one package
per subsystem, nothing else, and no module or class grows past what a reader takes in
at once. The import direction between the packages is checked by import-linter
(pyproject.toml, `lint-imports` in CI); this file checks what it cannot see."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

MONITOR = Path(__file__).resolve().parents[1] / "monitor"

BASE = {
    "__init__", "config", "errors", "keys", "metrics", "redaction", "redis_conn", "redis_faults",
    "redis_urls", "redis_cluster", "types",
}
"""The shared base: value types, errors, settings, metrics, Redis keys, redaction."""
SHIMS = {"estimators"}
"""Public import paths kept for users (``monitor.estimators`` re-exports ``monitor.learn``)."""
PACKAGES = {"media", "core", "learn", "queue", "live", "cluster", "webrtc"}

MAX_FILE_LINES = 420
MAX_CLASS_LINES = 280
WHOLE = "kept whole"
"""A longer module says in its docstring why it is kept whole."""


def test_top_level_holds_only_the_base_and_the_subsystems() -> None:
    modules = {p.stem for p in MONITOR.glob("*.py")}
    assert modules - BASE - SHIMS == set(), (
        "a module at the top of monitor/ outside the base: put it in its subsystem package"
    )
    packages = {p.name for p in MONITOR.iterdir() if (p / "__init__.py").is_file()}
    assert packages == PACKAGES


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_each_package_says_what_lives_there_and_what_it_may_use(package: str) -> None:
    doc = ast.get_docstring(ast.parse((MONITOR / package / "__init__.py").read_text()))
    assert doc and len(doc) > 80, f"monitor/{package}/__init__.py needs a docstring"
    assert "May use" in doc or "may use" in doc or "Builds on" in doc, package


def _sources() -> list[Path]:
    return sorted(p for p in MONITOR.rglob("*.py") if "__pycache__" not in p.parts)


def test_modules_are_short_or_say_why_not() -> None:
    long = []
    for p in _sources():
        text = p.read_text()
        n = len(text.splitlines())
        doc = ast.get_docstring(ast.parse(text)) or ""
        if n > MAX_FILE_LINES and WHOLE not in doc.lower():
            long.append(f"{p.relative_to(MONITOR)}: {n} lines")
    assert long == [], f"split these, or say in the module docstring why each is {WHOLE}"


def test_classes_fit_in_one_reading() -> None:
    long = []
    for p in _sources():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ClassDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                doc = ast.get_docstring(node) or ""
                if n > MAX_CLASS_LINES and WHOLE not in doc.lower():
                    long.append(f"{p.relative_to(MONITOR)}:{node.name}: {n} lines")
    assert long == []
