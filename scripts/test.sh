#!/usr/bin/env bash
# The test command: the whole suite against a real redis-server, real encoded
# video, a real RTSP server, headless Chromium and promtool. No network, no model
# download: tests build a tiny random DINOv2 on disk. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
for cmd in redis-server ffmpeg ffprobe rtsp-server-perl; do
  command -v "$cmd" >/dev/null || missing+=("$cmd")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "missing: ${missing[*]}" >&2
  echo "install them first: apt-get install -y ffmpeg redis-server rtsp-server-perl chromium prometheus prometheus-alertmanager docker-compose python3-gi gir1.2-gst-plugins-bad-1.0 gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-nice" >&2
  exit 2
fi
[ -x .venv/bin/python ] || ./scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# browser tests keep their screenshots here
export RESTRAV_TEST_ARTIFACTS=${RESTRAV_TEST_ARTIFACTS:-$PWD/test-artifacts}
exec .venv/bin/python -m pytest "$@"
