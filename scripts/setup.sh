#!/usr/bin/env bash
# Create .venv and install restrav-monitor with its development tools.
# torch comes from PyTorch's CPU wheel index (TORCH_INDEX_URL; the CPU build installs
# quickly); on a GPU machine install the CUDA build of torch first (see README) and it
# is kept. The `dev` extra includes `train` (scikit-learn, pyarrow, matplotlib).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
# TORCH_INDEX_URL="" (set but empty) takes torch from pip's configured index instead
TORCH_INDEX_URL=${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}
.venv/bin/python -c "import torch" 2>/dev/null \
  || .venv/bin/pip install -q ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==2.13.0"
.venv/bin/pip install -q -e ".[dev]"
echo "setup done: activate with 'source .venv/bin/activate' or call .venv/bin/restrav"
