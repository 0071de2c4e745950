#!/usr/bin/env bash
# The main job: sets up the environment (scripts/setup.sh) and runs `fastdyn demo`.
# Extra arguments go to the demo (e.g. --steps 1000 --device cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/fastdyn demo "$@"
