#!/usr/bin/env bash
# The whole GPU check of the data path in one command, under 8 minutes on one H100/H200:
#   1. pytest -m cuda (colour conversion and NVDEC decode on the device, engine, embed)
#   2. bench.gpu_check: CUDA vs CPU feature parity and drift for each model precision,
#      frames/s of the bare model call per batch size (BENCHMARKS.md "model precision")
#   3. bench_stream.py section 2: the engine step against the bare model call at batch 128
#      on 720p frames through the device-side pixel path
#   4. bench.bench_gpu_path: 64..384 live 720p25 H.264 streams with NVDEC decoding
#      (BENCHMARKS.md "GPU data path")
# Run scripts/device_prepare.sh first where PyPI is reachable. Outputs go to $OUT (or
# /tmp/restrav-device-check). DTYPE picks the model precision of steps 3 and 4.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/restrav-device-check}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH=$PWD
if [ -d .whl ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/restrav-site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/restrav-site:$PWD
fi
[ -d .bench-clips ] && export RESTRAV_SHARED_CLIPS=$PWD/.bench-clips
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
rc=0
timeout 150 "$PY" -m pytest -m cuda -o addopts="" -p no:cacheprovider -q \
  tests/test_cuda.py tests/test_colour.py tests/test_decode_backend.py tests/test_embed.py \
  tests/test_engine.py tests/test_window_ring.py tests/test_estimators.py 2>&1 | tee "$OUT/pytest-cuda.txt" || rc=1
timeout 180 "$PY" -m bench.gpu_check --clips "${RESTRAV_SHARED_CLIPS:-../shared/clips}" \
  --seconds 1 2>&1 | tee "$OUT/gpu_check.md" || rc=1
timeout 120 "$PY" bench/bench_stream.py --random-vits14 --device cuda \
  --dtype "${DTYPE:-float16-mixed}" --batch 128 --windows 30 --streams 64 --seconds 5 \
  --frame-size 1280x720 --pixel-path yuv 2>&1 | tee "$OUT/bench_stream.md" || rc=1
timeout 240 "$PY" -m bench.bench_gpu_path --streams 64,128,256,320,384 --seconds 10 \
  --warmup 6 --dtype "${DTYPE:-float16-mixed}" --decode-scaling 1,4,16 2>&1 \
  | tee "$OUT/gpu_path.md" || rc=1
exit $rc
