"""What docs/gpu.md says about parallel runs, exercised on the CPU: one fold over several processes
(DistributedDataParallel, gloo standing in for NCCL), and several machines sharing the work through git and a
DVC remote."""
from __future__ import annotations

import pytest

import shutil
import subprocess
import sys

import pandas as pd
import torch

from pipeline.data.competitions import STATE_FARM
from pipeline.paths import checkpoint_dir, fold_dir
from tests.conftest import GIT_IDENTITY, make_repo, put_competition, run, set_params

pytestmark = pytest.mark.slow  # end to end: stages as subprocesses

DVC = [sys.executable, "-m", "dvc"]


def test_finetune_devices_spreads_one_fold_over_two_processes_and_writes_the_usual_predictions(repo_copy,
                                                                                              tiny_competition):
    """As on a machine with two GPUs: two processes, each augmenting its batches on its device (kornia)."""
    put_competition(repo_copy, tiny_competition)
    set_params(repo_copy, finetune={"devices": 2, "augment_on": "device"})
    run([sys.executable, "-m", "pipeline.stages.folds"], repo_copy)
    # Two CPU ranks (gloo) whatever this machine has: on a one-GPU box two would be refused (machine.devices_refusal).
    result = run([sys.executable, "-m", "pipeline.stages.finetune", "net", "--fold", "0"], repo_copy,
                 env={"CUDA_VISIBLE_DEVICES": ""})
    assert "2 processes, one per device" in result.stderr
    folder = repo_copy / fold_dir(STATE_FARM.slug, "finetune-net", 0)
    oof, test = pd.read_csv(folder / "oof.csv"), pd.read_csv(folder / "test.csv")
    folds = pd.read_csv(repo_copy / "data" / "folds" / STATE_FARM.slug / "folds.csv")
    assert sorted(oof.img) == sorted(folds.img[folds.fold == 0])
    assert list(test.img) == list(pd.read_csv(repo_copy / "data" / "raw" / STATE_FARM.slug / "sample_submission.csv").img)
    for table in (oof, test):
        assert list(table.columns) == ["img", *STATE_FARM.classes]
        assert (table[list(STATE_FARM.classes)].sum(axis=1) - 1).abs().max() < 1e-4
    best = torch.load(repo_copy / checkpoint_dir(STATE_FARM.slug, "finetune-net", 0) / "final.pt", weights_only=True)
    assert best["config"]["augment_on"] == "device"


def _git(repo, *args: str) -> str:
    return run(["git", *args], repo).stdout


def test_machines_share_the_folds_through_git_and_a_dvc_remote_as_docs_gpu_md_says(tmp_path):
    origin, storage = tmp_path / "origin.git", tmp_path / "dvc-storage"
    subprocess.run(["git", "init", "-q", "--bare", str(origin)], check=True)
    first = make_repo(tmp_path / "machine-a")
    set_params(first, finetune={"folds": [0, 1]}, folds={"n_splits": 2})
    run(DVC + ["remote", "add", "-d", "shared", str(storage)], first)
    _git(first, "commit", "-qam", "two folds, a shared remote")
    _git(first, "remote", "add", "origin", str(origin))
    # Machine A: everything before fine-tuning, once, for everyone.
    run(DVC + ["repro", "folds", "heads"], first)
    run(DVC + ["push"], first)
    _git(first, "add", "-A")
    _git(first, "commit", "-qm", "folds, features, heads")
    _git(first, "push", "-q", "origin", "HEAD:main")

    machines = []
    for name in ("machine-b", "machine-c"):
        subprocess.run(["git", "clone", "-q", "-b", "main", str(origin), str(tmp_path / name)], check=True,
                       env={**GIT_IDENTITY, "PATH": "/usr/bin:/bin"})
        machines.append(tmp_path / name)
    for fold, machine in enumerate(machines):  # both compute at once; only the commits take turns
        run(DVC + ["pull", "--allow-missing"], machine)  # what is not made yet is not there yet
        assert "Running stage 'features" not in run(DVC + ["repro", f"finetune@net-{fold}"], machine).stdout
        run(DVC + ["push"], machine)
    for fold, machine in enumerate(machines):
        # The others' stages come from git (a worker's own edits are only its lock); its outputs stay, ignored.
        _git(machine, "fetch", "-q", "origin")
        _git(machine, "reset", "-q", "--hard", "origin/main")
        run(DVC + ["commit", "-f", f"finetune@net-{fold}"], machine)
        _git(machine, "add", "-A")
        _git(machine, "commit", "-qm", f"finetune@net-{fold}")
        _git(machine, "push", "-q", "origin", "HEAD:main")

    _git(first, "pull", "-q", "origin", "main")
    run(DVC + ["pull", "--allow-missing"], first)
    final = run(DVC + ["repro"], first)
    assert "Running stage 'finetune" not in final.stdout
    assert "Running stage 'ensemble'" in final.stdout and "Running stage 'submission'" in final.stdout
    assert (first / "submissions" / "latest.csv").is_file()
    shutil.rmtree(storage)
