#!/usr/bin/env bash
# The whole pipeline on a GPU machine: the stand-in at State Farm's full counts (22,360 train / 79,980 test
# images), the GPU preset of presets/gpu.yaml, `dvc repro` through to a validated submission, and every
# stage's wall time. Meant for a lent GPU (the device tool): one prepared command.
#
#   bash bench/gpu_repro.sh [WORKDIR [TRAIN_DRIVERS TEST_DRIVERS FRAMES]]    # the last three: a smaller stand-in
#
# The same in steps that each fit a lent machine's 10-minute command: bench/gpu_steps.sh.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/gpu-repro}
counts=("${2:-26}" "${3:-93}" "${4:-86}")  # State Farm's full counts: 22,360 train and 79,980 test images
. "$repo/bench/gpu_setup.sh"
gpu_environment "$repo" "$work"
gpu_workdir "$repo" "$work" "${counts[@]}"
cd "$work"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
start=$(date +%s)
python3 -m dvc repro 2>&1 | tee repro.log | grep -E "done in|Running stage|error|img/s on|local leaderboard|held-out log loss [0-9.]+ with"
echo "whole dvc repro: $(( $(date +%s) - start )) s"
python3 -c "import pandas as pd; s = pd.read_csv('submissions/latest.csv'); print('submission', s.shape)"
