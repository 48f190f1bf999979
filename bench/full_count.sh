#!/usr/bin/env bash
# A competition at its full size on this machine (no GPU), every stage, in steps you can resume. Each step is a
# `dvc repro --single-item` of its stages (a step done is skipped by DVC, one cut short runs again) and appends to
# WORKDIR/steps.tsv its wall time, images, images per second, peak RSS (the step's largest process), the disk
# the work folder holds (workspace and DVC's cache: a hard-linked file counted once) and the CPU seconds its
# processes used (user + system): the work a step is, whatever else the machine was running beside it. Fine-tuning
# is the default's recipe for one fold (~16,800 train photos, its epochs and size) predicting one test view over
# every test photo; the ensemble blends the heads (the fine-tuned net has one fold). `estimate` writes what
# `python -m pipeline.plan` expects each step to take here (pipeline/training/costs.py), `compare` appends each step's
# estimate beside its measurement to bench/full_count.csv (stage, images, estimated_s, measured_s, peak_rss_mib,
# commit). A preset on a card: `python -m pipeline.plan --preset presets/gpu.yaml` (its T4 and H100 columns).
#
#   bash bench/full_count.sh setup state-farm|dogs-vs-cats [WORKDIR]     # full counts, stand-in generated offline
#   bash bench/full_count.sh estimate [WORKDIR]                          # before the steps (the calibration: seconds)
#   bash bench/full_count.sh standin|frames|features|folds|heads|finetune|ensemble|all [WORKDIR]
#   bash bench/full_count.sh compare [WORKDIR] [STEP...]              # STEPs: those measured again (default every one)
#
# State Farm: 22,360 train + 79,980 test images at 640x480 (the stand-in's driver x class x frame grid nearest the
# competition's 22,424 + 79,726); Dogs vs. Cats Redux: 25,000 + 12,500, grouped by near-duplicates (folds.group_by:
# auto), so its `folds` step is where that grouping runs at full count.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
step=${1:?a step: setup estimate standin frames features folds heads finetune ensemble all compare}
if [ "$step" = setup ]; then
  competition=${2:?state-farm or dogs-vs-cats}
  work=${3:-/tmp/full-count-$competition}
else
  work=${2:-$(ls -d /tmp/full-count-* 2>/dev/null | head -1)}
fi
export PATH="$(dirname "$(command -v python)"):$PATH" PYTHONPATH="$work" PYTHONUNBUFFERED=1

if [ "$step" = setup ]; then
  rm -rf "$work" && mkdir -p "$work/.dvc" "$work/submissions"
  cp -r "$repo"/pipeline "$repo"/competitions "$repo"/dvc.yaml "$repo"/params.yaml "$repo"/.dvcignore "$work"/
  cp "$repo"/.dvc/config "$work/.dvc/"
  cd "$work"
  python - "$competition" <<'PY'
import sys, yaml
params = yaml.safe_load(open("params.yaml"))
params["finetune"]["folds"] = [0]  # one fold of the default's recipe
params["finetune"]["test_views"] = ["full"]  # one test view over every test photo
params["ensemble"].update(models=[f"heads-{next(iter(params['features']['backbones']))}"],
                          neighbour_features=[next(iter(params["features"]["backbones"]))])
if sys.argv[1] == "state-farm":
    params["standin"].update(train_drivers=26, test_drivers=93, frames_per_class=86)
else:
    params["competition"] = "dogs-vs-cats-redux-kernels-edition"
    params["augment"]["hflip"] = True
    params["standin"].update(train_drivers=500, test_drivers=250, frames_per_class=25)
yaml.safe_dump(params, open("params.yaml", "w"), sort_keys=False)
PY
  git init -q && git add -A && git -c user.name=bench -c user.email=bench@local commit -qm "full count: $competition"
  echo "set up $work for $competition at full count"
  exit 0
fi
cd "$work"

images() {  # how many images a step goes through, from the run's tables (after the sample stage)
  python - "$1" <<'PY'
import sys, yaml, pandas as pd
params = yaml.safe_load(open("params.yaml"))
folder = f"data/sample/{params['competition']}"
try:
    train, test = (len(pd.read_csv(f"{folder}/{split}.csv")) for split in ("train", "test"))
except FileNotFoundError:
    train = test = 0
views = len(params["features"]["test_views"])
finetune_views = len(params["finetune"]["test_views"])
folds = params["folds"]["n_splits"]
print({"standin": train + test, "frames": train + test, "features": (train + test) * views, "folds": train,
       "heads": train * folds, "finetune": train * (folds - 1) // folds + (train // folds + test) * finetune_views,
       "ensemble": train + test}[sys.argv[1]])
PY
}

run() {  # $1: the step's name; the rest: its stages
  local name=$1; shift
  local log="$work/step-$name.log" start seconds count rss disk
  start=$(date +%s.%N)
  /usr/bin/time -f "%M %U %S" -o "$work/step-$name.rss" python -m dvc repro --single-item "$@" > "$log" 2>&1 \
    || { tail -5 "$log"; exit 1; }
  seconds=$(python -c "import time; print(round(time.time() - $start, 1))")
  count=$(images "$name")
  read -r rss user system < <(tail -1 "$work/step-$name.rss")
  rss=$(( rss / 1024 ))
  disk=$(( $(du -sb "$work" | cut -f1) / 1048576 ))  # du counts a hard-linked file once
  grep -E "img/s|done in|log loss|wrote|groups" "$log" | tail -4 || true
  printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\n" "$name" "$seconds" "$count" \
    "$(python -c "print(round($count / max($seconds, 1e-9), 1))")" "$rss" "$disk" \
    "$(python -c "print(round($user + $system, 1))")" | tee -a steps.tsv
}

backbone=$(python -c "import yaml; print(next(iter(yaml.safe_load(open('params.yaml'))['features']['backbones'])))")
case "$step" in
  standin) run standin download sample ;;
  frames) run frames frames ;;
  features) run features "features@$backbone" ;;
  folds) run folds folds ;;
  heads) run heads "heads@$backbone" ;;
  finetune) run finetune "finetune@net-0" ;;
  ensemble) run ensemble ensemble submission ;;
  all) for s in standin frames features folds heads finetune ensemble; do bash "$repo/bench/full_count.sh" "$s" "$work"; done ;;
  estimate)
    python - <<'PY' > estimates.tsv
# What `python -m pipeline.plan` expects of each step here: the raw data's counts once the stand-in is made, the
# competition's official ones before.
from pipeline.config import load_params
from pipeline.data.competitions import competition_of
from pipeline.training.costs import image_counts, stage_work, this_machine

params = load_params()
spec = competition_of(params)
train, test, _ = image_counts(params, spec)
here = this_machine(params)
backbone = next(iter(params.features.backbones))
for step, stage in {"frames": "frames", "features": f"features@{backbone}", "heads": f"heads@{backbone}",
                    "finetune": "finetune@net-0", "ensemble": "ensemble"}.items():
    work = stage_work(stage, params, spec, train, test)
    print(f"{step}\t{work.images}\t{work.seconds(here):.0f}")
PY
    cat estimates.tsv ;;
  compare)
    python - "$repo/bench/full_count.csv" "$(git -C "$repo" rev-parse --short HEAD)" "${@:3}" <<'PY'
import csv, sys
from pathlib import Path
import pandas as pd
target, commit, only = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
steps = pd.read_csv("steps.tsv", sep="\t", names=["step", "seconds", "images", "img_per_s", "peak_rss_mib",
                                                  "disk_mib", "cpu_s"]).groupby("step").last()
estimates = pd.read_csv("estimates.tsv", sep="\t", names=["step", "images", "estimated_s"]).set_index("step")
new = not target.exists()
with target.open("a", newline="") as f:
    writer = csv.writer(f)
    if new:
        writer.writerow(["stage", "images", "estimated_s", "measured_s", "peak_rss_mib", "commit"])
    for step in estimates.index.intersection(steps.index).intersection(only or steps.index):
        measured, estimated = steps.seconds[step], estimates.estimated_s[step]
        writer.writerow([step, steps.images[step], estimated, measured, steps.peak_rss_mib[step], commit])
        print(f"{step:10s} estimated {estimated:8.0f} s, measured {measured:8.0f} s: {estimated / measured - 1:+.0%}")
PY
    ;;
  *) echo "unknown step $step"; exit 2 ;;
esac
