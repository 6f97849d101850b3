#!/usr/bin/env bash
# Prepare the one-shot GPU check (scripts/device_check.sh) on a machine with PyPI access:
# wheels the GPU machine's Python 3.12 image lacks go to .whl/, a few shared clips with
# their manifest to .bench-clips/ (both git-ignored; carry them to the GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
rm -rf .whl .bench-clips && mkdir -p .whl .bench-clips
# what monitor/ and the CUDA tests import beyond the image's torch, transformers, numpy,
# aiohttp, prometheus-client, pyyaml and safetensors
WHEELS=()
for name in av pydantic pydantic-core pydantic-settings python-dotenv annotated-types \
            typing-inspection pytest-asyncio; do
  # the versions tested here (.venv), so the GPU run checks the same code
  v=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$name'))" 2>/dev/null)
  WHEELS+=("$name${v:+==$v}")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
SHARED=${RESTRAV_SHARED_CLIPS:-../shared/clips}
cp "$SHARED/manifest.json" .bench-clips/
for c in real__torchcodec__nasa_13013.mp4 real__torchcodec__dog_eating_854132.mp4 \
         real__mmaction2__test2.mp4 ai__cogvideo__4.mp4 ai__easyanimate__1.mp4 \
         real__open_sora_plan__origin_video_0.mp4; do
  cp "$SHARED/$c" .bench-clips/
done
du -sh .whl .bench-clips
echo "ready: run scripts/device_check.sh on the GPU machine, carrying .whl and .bench-clips"
