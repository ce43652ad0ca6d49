#!/usr/bin/env bash
# One device call per part: `run` with carry ["bench/wheels"] and command `bash bench/gpu.sh speed`, then
# `bash bench/gpu.sh paths` (each under 10 minutes); results land in $OUT/gpu-speed.json and $OUT/gpu-paths.json.
# The wheels are what the GPU machine lacks (make bench-wheels fetches them): diffusers, potassium, compel, peft, ...
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --target /tmp/carried bench/wheels/*.whl
export PYTHONPATH="/tmp/carried:$PWD:$PWD/bench" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
timeout 560 python3 -m bench.gpu --out "${OUT:-bench/results}" "$@"
