"""What each command imports: `--version` and `worker --check` load no torch (compose runs the
check every 15 s), and serve/worker/score run without the `train` extra (scikit-learn,
pyarrow, matplotlib). Checked with ``python -X importtime`` and by blocking those modules in a
real subprocess; no timings are asserted."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from .media import write_clip

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "sklearn", "matplotlib", "pyarrow", "aiortc")
TRAIN_EXTRA = ("sklearn", "pyarrow", "matplotlib")


def run_python(*args: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **extra_env}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def imported(stderr: str) -> set[str]:
    """Top-level packages named by ``-X importtime`` lines."""
    return {m.group(1).split(".")[0] for m in re.finditer(r"\|\s+([\w.]+)\s*$", stderr, re.M)}


def test_version_imports_no_torch() -> None:
    proc = run_python("-X", "importtime", "-m", "workers.cli", "--version")
    assert proc.returncode == 0 and proc.stdout.startswith("restrav ")
    mods = imported(proc.stderr)
    assert "monitor" in mods  # the check sees imports at all
    assert not mods & set(HEAVY), mods & set(HEAVY)


def test_worker_check_imports_no_torch(redis_url: str) -> None:
    proc = run_python("-X", "importtime", "-m", "workers.cli", "worker", "--check",
                      "--redis-url", redis_url, "--name", "nobody")
    assert proc.returncode == 1 and "no fresh heartbeat" in proc.stderr  # Redis answered
    assert not imported(proc.stderr) & set(HEAVY)


BLOCK = f"import sys\nfor m in {TRAIN_EXTRA!r}: sys.modules[m] = None\n"


def test_score_serve_and_worker_run_without_the_train_extra(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    clip = tmp_path / "a.mp4"
    write_clip(clip, fps=25, n_frames=60, size=(64, 48))
    code = BLOCK + (
        "import workers.serve_cmd, workers.queue_cmd, monitor.queue, monitor.live.service\n"
        "from workers.cli import main\n"
        f"sys.exit(main(['score', {str(clip)!r}, '--model', {str(tiny_model_dir)!r},"
        " '--device', 'cpu']))\n"
    )
    proc = run_python("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert '"ok": true' in proc.stdout
    assert "Loading weights" not in proc.stderr  # stderr is not a terminal: no bar


def test_training_commands_say_which_extra_is_missing(tmp_path: Path) -> None:
    code = BLOCK + (
        "from workers.cli import main\n"
        f"sys.exit(main(['extract', {str(tmp_path)!r}, '-o', {str(tmp_path / 'o')!r}]))\n"
    )
    proc = run_python("-c", code)
    assert proc.returncode == 3, proc.stderr
    assert "restrav-monitor[train]" in proc.stderr and "Traceback" not in proc.stderr


def test_score_windows_progress_counts_frames(tmp_path: Path, tiny_model_dir: Path) -> None:
    clip = tmp_path / "a.mp4"
    write_clip(clip, fps=25, n_frames=75, size=(64, 48))
    # every update drawn (tqdm's TQDM_* defaults): a tiny clip is embedded within the 0.1 s
    # a bar waits between draws, and the frames bar is cleared when it closes
    proc = run_python("-m", "workers.cli", "score", "--windows", "--progress", "--model",
                      str(tiny_model_dir), "--device", "cpu", str(clip), TQDM_MININTERVAL="0")
    assert proc.returncode == 0, proc.stderr
    counts = [int(n) for n in re.findall(r"(\d+)frame", proc.stderr)]
    assert counts and max(counts) >= 24, proc.stderr  # every embedded frame was counted
