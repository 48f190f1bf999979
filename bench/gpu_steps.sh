#!/usr/bin/env bash
# The full-count stand-in on a GPU in steps that each fit a lent machine's 10-minute command. Each step is a
# `dvc repro --single-item` of its stages: a step already done is skipped, one cut short runs again. Each
# prints its wall time, images per second and peak memory (of the process tree's largest process) and appends
# them to WORKDIR/steps.tsv; `project` adds them up into the whole GPU preset's projected `dvc repro` time
# (one fine-tuning fold measured, times every model and fold of the preset).
#
#   bash bench/gpu_steps.sh setup [WORKDIR [TRAIN_DRIVERS TEST_DRIVERS FRAMES]]   # default: full counts
#   bash bench/gpu_steps.sh standin|frames|features|heads|finetune|ensemble [WORKDIR]
#   bash bench/gpu_steps.sh project [WORKDIR]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
step=${1:?a step: setup standin frames features heads finetune ensemble project}
work=${2:-/tmp/gpu-steps}
. "$repo/bench/gpu_setup.sh"
gpu_environment "$repo" "$work"
if [ "$step" = setup ]; then
  gpu_workdir "$repo" "$work" "${3:-26}" "${4:-93}" "${5:-86}"  # State Farm's full counts: 22,360 / 79,980 images
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
  exit 0
fi
cd "$work"
images() {  # how many images a step goes through, from the run's tables (after the sample stage)
  python3 - "$1" <<'PY'
import sys, yaml, pandas as pd
params = yaml.safe_load(open("params.yaml"))
folder = f"data/sample/{params['competition']}"
try:
    train, test = (len(pd.read_csv(f"{folder}/{split}.csv")) for split in ("train", "test"))
except FileNotFoundError:
    train = test = 0
views = len(params["features"]["test_views"])
folds = params["folds"]["n_splits"]
epochs = params["finetune"]["models"]["net"].get("epochs", params["finetune"]["defaults"].get("epochs", 1))
print({"standin": train + test, "frames": train + test, "features": (train + test) * views, "heads": train * folds,
       "finetune": train * (folds - 1) // folds * epochs, "ensemble": train + test}[sys.argv[1]])
PY
}
run() {  # $1: the step's name; the rest: its stages
  local name=$1; shift
  local start log=/tmp/gpu-step-$name.log
  start=$(date +%s.%N)
  /usr/bin/time -f "%M" -o /tmp/gpu-step-$name.rss python3 -m dvc repro --single-item "$@" > "$log" 2>&1 \
    || { tail -5 "$log"; exit 1; }
  local seconds count rss
  seconds=$(python3 -c "import time; print(round(time.time() - $start, 1))")
  count=$(images "$name")
  rss=$(( $(tail -1 /tmp/gpu-step-$name.rss) / 1024 ))
  grep -E "img/s|done in|log loss|wrote" "$log" | tail -4 || true
  printf "%s\t%s\t%s\t%s\t%s\n" "$name" "$seconds" "$count" \
    "$(python3 -c "print(round($count / max($seconds, 1e-9)))")" "$rss" | tee -a steps.tsv
}
case "$step" in
  standin) run standin download sample ;;
  frames) run frames frames ;;
  features) run features "features@tf_efficientnet_lite0" folds ;;
  heads) run heads "heads@tf_efficientnet_lite0" ;;
  finetune) run finetune "finetune@net-0" ;;
  ensemble)  # every other fold is needed first: a projection run ends at `project`
    run ensemble ensemble submission ;;
  project)
    python3 - <<'PY'
import yaml, pandas as pd
params = yaml.safe_load(open("params.yaml"))
steps = pd.read_csv("steps.tsv", sep="\t", names=["step", "seconds", "images", "img_per_s", "peak_rss_mib"])
steps = steps.groupby("step").last()
print(steps.to_string())
fits = len(params["finetune"]["models"]) * len(params["finetune"]["folds"])
once = steps.drop(index=["finetune"], errors="ignore").seconds.sum()
total = once + steps.seconds.get("finetune", float("nan")) * fits
print(f"projected whole GPU-preset dvc repro: {total / 60:.1f} min ({fits} fine-tuning folds at "
      f"{steps.seconds.get('finetune', float('nan')):.0f} s each, the rest {once:.0f} s)")
PY
    ;;
  *) echo "unknown step $step"; exit 2 ;;
esac
