#!/usr/bin/env bash
# One device call: `run` with carry ["bench/wheels"] and command `bash bench/gpu.sh`; results land in $OUT/gpu.json.
# The wheels are what the GPU machine lacks (make bench-wheels fetches them): diffusers, potassium, compel, peft, ...
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --target /tmp/carried bench/wheels/*.whl
export PYTHONPATH="/tmp/carried:$PWD:$PWD/bench" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
timeout 430 python3 -m bench.gpu --out "${OUT:-bench/results}"
