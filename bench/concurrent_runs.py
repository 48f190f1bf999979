"""A sweep on one machine: two queued experiments at once (`dvc queue start -j 2`) against the same two one after the
other (`-j 1`), from the same committed baseline. Target: at once / in turn <= 1.0.

Each stage takes its share of the cores (pipeline/compute/cores.py); without that, two runs of two torch threads each on
two cores thrash (OpenMP threads spin while they wait) and the pair finishes far later than in turn.

Builds a throw-away git+DVC copy of this repo at a small preset (a stand-in of 6 train and 2 test drivers, 4 frames
per class, two folds, fine-tuning at 128 px for 6 epochs: training, not imports, is most of an experiment), runs
`dvc repro` and commits it, copies that repository twice, and in each queues `dvc exp run --queue -S
'dropout=0.2,0.5'` (heads, fine-tuning, the ensemble and the submission run again; DVC restores the rest),
started with `-j 1` in one and `-j 2` in the other.

    python bench/concurrent_runs.py [--unshared]     # --unshared: also at once with every stage on all cores
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
FILES = ["pipeline", "params.yaml", "dvc.yaml", "pyproject.toml", ".dvcignore", ".gitignore", ".dvc/config",
         ".dvc/.gitignore", "metrics/leaderboard"]
PRESET = {"standin": {"train_drivers": 6, "test_drivers": 2, "frames_per_class": 4},
          "folds": {"n_splits": 2},
          "features": {"backbones": {"tf_efficientnet_lite0": {"image_size": 128}}},
          "finetune": {"folds": [0, 1], "models": {"net": {"backbone": "tf_efficientnet_lite0", "image_size": 128,
                                                            "epochs": 6}}}}
IDENTITY = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@pipeline.local", "GIT_COMMITTER_NAME": "bench",
            "GIT_COMMITTER_EMAIL": "bench@pipeline.local"}
DVC = [sys.executable, "-m", "dvc"]


def sh(args: list[str], cwd: Path, threads: int | None = None) -> str:
    env = {**os.environ, **IDENTITY, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("OMP_NUM_THREADS", None)  # each stage sizes its own threads: that is what is measured
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(args)} failed in {cwd}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return done.stdout


def merged(old, new):
    if isinstance(old, dict) and isinstance(new, dict):
        return {**old, **{key: merged(old.get(key), value) for key, value in new.items()}}
    return new


def sweep(repo: Path, jobs: int, threads: int | None = None) -> float:
    """Seconds from `dvc queue start -j <jobs>` until both queued experiments have finished (``threads``: every
    stage forced to that many, as before pipeline/compute/cores.py)."""
    sh(DVC + ["exp", "run", "--queue", "-S", "dropout=0.2,0.5"], repo)
    start = time.perf_counter()
    sh(DVC + ["queue", "start", "-j", str(jobs)], repo, threads)
    while True:
        status = sh(DVC + ["queue", "status"], repo)
        if "Running" not in status and "Queued" not in status:
            break
        time.sleep(1)
    seconds = time.perf_counter() - start
    if status.count("Success") != 2:
        raise SystemExit(f"the queued experiments did not both succeed:\n{status}")
    return seconds


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        for name in FILES:
            (base / name).parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if (REPO / name).is_dir() else shutil.copy2)(REPO / name, base / name)
        params = merged(yaml.safe_load((base / "params.yaml").read_text()), PRESET)
        (base / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        sh(["git", "init", "-q"], base)
        sh(["git", "add", "-A"], base)
        sh(["git", "commit", "-qm", "the pipeline at a small preset"], base)  # DVCLive needs a commit
        started = time.perf_counter()
        sh(DVC + ["repro"], base)
        print(f"baseline dvc repro: {time.perf_counter() - started:.0f} s on {len(os.sched_getaffinity(0))} cores")
        sh(["git", "add", "-A"], base)
        sh(["git", "commit", "-qm", "baseline"], base)
        in_turn = sweep(shutil.copytree(base, Path(tmp) / "in-turn", symlinks=True), jobs=1)
        at_once = sweep(shutil.copytree(base, Path(tmp) / "at-once", symlinks=True), jobs=2)
        print(f"two experiments in turn (-j 1): {in_turn:.0f} s; at once (-j 2): {at_once:.0f} s; "
              f"at once / in turn: {at_once / in_turn:.2f} (target <= 1.0)")
        if "--unshared" in sys.argv:  # what two runs at once cost when each took every core
            cores = len(os.sched_getaffinity(0))
            unshared = sweep(shutil.copytree(base, Path(tmp) / "unshared", symlinks=True), jobs=2, threads=cores)
            print(f"at once with {cores} threads per stage: {unshared:.0f} s ({unshared / in_turn:.2f} x in turn)")


if __name__ == "__main__":
    main()
