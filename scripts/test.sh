#!/usr/bin/env bash
# The test command: the whole suite against real redis-server, real encoded
# video and (where installed) a real RTSP server and Chromium. No network,
# no model download: tests build a tiny random DINOv2 on disk.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
