#!/usr/bin/env bash
# The GPU check, one device call: `run` with carry ["bench/wheels"] and command `bash bench/gpu.sh` (make bench-wheels
# first, here). It installs the carried wheels offline, checks that everything imports and a generation runs on the
# GPU before anything is timed (bench/offline_check.py), then runs bench/gpu.py's checks within its time budget;
# results land in $OUT/gpu.json, each check's figures and whether it passed.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/carried bench/wheels/*.whl
export PYTHONPATH="/tmp/carried:$PWD" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -m bench.offline_check
timeout "${GPU_CHECK_S:-520}" python3 -m bench.gpu --out "${OUT:-bench/results}" --budget "${GPU_BUDGET_S:-450}" "$@"
