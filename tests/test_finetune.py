"""Fine-tuning a fold: an interrupted run resumes where it stopped and ends where an uninterrupted one does, and
a finished one predicts other test-time views without training again (several processes per fold and several
machines: tests/test_parallel.py)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import logging
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from pipeline.compute.devices import pick_device
from pipeline.data.competitions import STATE_FARM
from pipeline.paths import checkpoint_dir, fold_dir
from pipeline.training.trainer import Checkpoint
from tests.conftest import GIT_IDENTITY, put_competition, run, set_params

MODEL = "finetune-net"
FOLD0 = ("net", "--fold", "0")
FINETUNE = [sys.executable, "-m", "pipeline.stages.finetune", *FOLD0]


def resume_tolerance(device_type: str) -> tuple[float, bool]:
    """How close a resumed run's predictions must come to an uninterrupted one's, and whether the weights must be the
    same bytes. On a CPU, under one thread count, they are. On a GPU cuDNN's algorithm choice and atomic adds make
    two uninterrupted runs differ in the last bits, which four epochs grow; the resumed run must still land where
    the fresh one does, within what a GPU's arithmetic allows."""
    return (1e-4, True) if device_type == "cpu" else (2e-2, False)


def _prepare(repo, tiny_competition, **finetune):
    put_competition(repo, tiny_competition)
    set_params(repo, finetune={"models": {"net": finetune}})
    run([sys.executable, "-m", "pipeline.stages.folds"], repo)


def _fold0(repo) -> tuple[pd.DataFrame, pd.DataFrame]:
    folder = repo / fold_dir(STATE_FARM.slug, MODEL, 0)
    return pd.read_csv(folder / "oof.csv"), pd.read_csv(folder / "test.csv")


def test_a_checkpoint_from_another_process_count_or_batch_size_is_not_resumed_and_the_log_says_why(tmp_path,
                                                                                                   caplog):
    config = {"model": "net", "world": 1, "recipe": {"batch_size": 32, "lr": 0.002}}
    torch.save({"config": {**config, "world": 2, "recipe": {"batch_size": 16, "lr": 0.002}}, "epoch": 3, "state": {}},
               tmp_path / "last.pt")
    trainer = SimpleNamespace(feed=SimpleNamespace(device=torch.device("cpu")))
    with caplog.at_level(logging.WARNING):
        assert Checkpoint(tmp_path, config).resume(trainer) == 0
    assert "recipe.batch_size: 16 -> 32" in caplog.text and "world: 2 -> 1" in caplog.text
    assert "lr" not in caplog.text


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_checkpoint_and_matches_an_uninterrupted_one(repo_copy, tiny_competition,
                                                                                          tmp_path, run_stage):
    settings = dict(epochs=4, image_size=64)
    _prepare(repo_copy, tiny_competition, **settings)
    last = repo_copy / checkpoint_dir(STATE_FARM.slug, MODEL, 0) / "last.pt"
    env = {**os.environ, "PATH": f"{sys.executable.rsplit('/', 1)[0]}:{os.environ['PATH']}",
           "PYTHONPATH": str(repo_copy), **GIT_IDENTITY}
    process = subprocess.Popen(FINETUNE, cwd=repo_copy, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not last.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert last.exists(), "no checkpoint was written before the kill"
    assert not (repo_copy / fold_dir(STATE_FARM.slug, MODEL, 0)).exists()  # nothing half-written

    status, resumed = run_stage(repo_copy, "finetune", *FOLD0)  # in this process: the killed command was the subprocess
    assert status == 0 and any("resuming from" in line for line in resumed)

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    for name in ("pipeline", "params.yaml"):
        os.symlink(repo_copy / name, fresh / name)
    put_competition(fresh, tiny_competition)
    (fresh / "data" / "folds").mkdir(parents=True)
    os.symlink(repo_copy / "data" / "folds" / STATE_FARM.slug, fresh / "data" / "folds" / STATE_FARM.slug)
    assert run_stage(fresh, "finetune", *FOLD0)[0] == 0
    atol, same_bytes = resume_tolerance(pick_device().type)  # where the stage trained
    for resumed_table, fresh_table in zip(_fold0(repo_copy), _fold0(fresh)):
        pd.testing.assert_frame_equal(resumed_table, fresh_table, atol=atol, rtol=0)
    # On a CPU, under the same thread count (OMP_NUM_THREADS, recorded in final.pt), the weights are the same bytes.
    final = [(repo / checkpoint_dir(STATE_FARM.slug, MODEL, 0) / "final.pt").read_bytes() for repo in (repo_copy, fresh)]
    assert final[0] == final[1] or not same_bytes

    # Other test-time views: the finished run predicts again with its final weights, it does not train again.
    before = _fold0(repo_copy)
    set_params(repo_copy, finetune={"test_views": ["full", "zoom"]})
    status, lines = run_stage(repo_copy, "finetune", *FOLD0)
    repredicted = "\n".join(lines)
    assert status == 0 and "resuming from" in repredicted and " epoch 1: train loss" not in repredicted
    assert "with 2 test view(s)" in repredicted
    after = _fold0(repo_copy)
    assert list(after[1].img) == list(before[1].img)
    assert not after[1].equals(before[1])
