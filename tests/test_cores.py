"""Runs at once on one machine share its cores: a stage takes cores // stages running when it starts and keeps that
count to its end (pipeline/compute/cores.py), and records it with what it trained (the finetune stage's ``threads``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import psutil
import pytest
import torch

from pipeline.compute import cores
from pipeline.compute.cores import stage_command
from pipeline.data.competitions import STATE_FARM
from pipeline.errors import cli
from pipeline.paths import checkpoint_dir, metrics_dir
from tests.conftest import put_competition, run, set_params


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """A runs folder of its own, no OMP_NUM_THREADS (the suite sets one), torch's thread count restored after."""
    monkeypatch.setenv("PIPELINE_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads = torch.get_num_threads()
    cores.share.cache_clear()
    yield tmp_path / "runs"
    cores.share.cache_clear()
    torch.set_num_threads(threads)


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _register(folder, process: psutil.Process | subprocess.Popen, started: float | None = None) -> None:
    """What take_share writes for a stage: its pid, holding its start time."""
    folder.mkdir(exist_ok=True)
    started = psutil.Process(process.pid).create_time() if started is None else started
    (folder / str(process.pid)).write_text(f"{started:.2f}")


def test_a_stage_takes_its_share_once_and_dead_or_reused_registrations_do_not_count(machine, monkeypatch):
    monkeypatch.setattr(cores, "machine_cores", lambda: 4)
    other, reused = _sleeper(), _sleeper()
    try:
        _register(machine, other)  # another run's stage, running
        (machine / "999999999").write_text("1.00")  # a stage SIGKILLed before it could clean up
        # A SIGKILLed stage's pid given to an unrelated process since: alive, but it started later than recorded.
        _register(machine, reused, started=psutil.Process(reused.pid).create_time() - 3600)
        seen = []
        stage_command(lambda: seen.append((cores.running_stages(), cores.share(), torch.get_num_threads())))()
        assert seen == [(2, 2, 2)]  # this stage and the other one: half of 4 cores each
        # The stale two swept; this one's registration goes when its process exits.
        assert sorted(p.name for p in machine.iterdir()) == sorted([str(other.pid), str(os.getpid())])
        other.kill()
        other.wait()
        assert cores.running_stages() == 1 and cores.share() == 2  # alone now, but its count is fixed for its run
    finally:
        other.kill()
        reused.kill()


def test_an_explicit_thread_count_wins_and_commands_that_wait_take_no_share(machine, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cores.share() == 1
    registered = []
    cli(lambda: registered.append(sorted(p.name for p in machine.glob("*"))))()  # a command, not a stage
    assert registered == [[]]

    def torchrun_parent():  # pipeline/training/trainer.py's spread_over_devices gives back its share before it waits
        registered.append(sorted(p.name for p in machine.glob("*")))
        cores.give_back()
        registered.append(sorted(p.name for p in machine.glob("*")))

    stage_command(torchrun_parent)()
    assert registered[1:] == [[str(os.getpid())], []]


@pytest.mark.slow
def test_a_fold_trained_beside_another_stage_takes_half_the_cores_and_records_it(repo_copy, tiny_competition, machine,
                                                                                  monkeypatch):
    """End to end with nothing pinned: the stage reads this machine's cores itself and sees the other stage."""
    put_competition(repo_copy, tiny_competition)
    set_params(repo_copy, folds={"n_splits": 3})
    run([sys.executable, "-m", "pipeline.stages.folds"], repo_copy, env={"OMP_NUM_THREADS": "1"})
    other = _sleeper()
    try:
        _register(machine, other)
        # Cores are what is shared here: on a GPU machine the fold would train on the card (and in bfloat16).
        env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"} | {"CUDA_VISIBLE_DEVICES": ""}
        command = [sys.executable, "-m", "pipeline.stages.finetune", "net", "--fold", "0"]
        finished = subprocess.run(command, cwd=repo_copy, capture_output=True, text=True,
                                  env={**env, "PYTHONPATH": str(repo_copy), "PIPELINE_RUNS_DIR": str(machine)})
    finally:
        other.kill()
    assert finished.returncode == 0, finished.stderr
    expected = max(cores.machine_cores() // 2, 1)
    assert f"{expected} thread(s): {cores.machine_cores()} core(s), 2 stage(s) running" in finished.stderr
    metrics = json.loads((repo_copy / metrics_dir("finetune-net-fold0") / "metrics.json").read_text())
    final = torch.load(repo_copy / checkpoint_dir(STATE_FARM.slug, "finetune-net", 0) / "final.pt",
                       weights_only=True)
    assert metrics["threads"] == final["machine"]["threads"] == expected
    assert final["machine"]["precision"] == "float32" and final["machine"]["device"] == "cpu"


ALLOCATE = """
import resource, torch
from pipeline.compute.cores import stage_command

def batches_faulted_in():
    features = torch.rand(32, 32, 112, 112)  # 51 MB: lite0's first feature map at 224 px, a batch of 32
    faulted = 0
    for _ in range(30):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        features * 2  # the next layer's output, allocated, filled and freed, as each batch's is
        faulted += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before > 10_000  # 51 MB of 4 KiB pages
    print(faulted)

if __import__("sys").argv[1] == "stage":
    stage_command(batches_faulted_in)()
else:
    batches_faulted_in()
"""


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc's allocator")
def test_a_stage_keeps_the_memory_it_frees_instead_of_faulting_it_in_again_each_batch(tmp_path):
    def faults(how: str) -> int:
        done = subprocess.run([sys.executable, "-c", ALLOCATE, how], capture_output=True, text=True, check=True,
                              env={**os.environ, "PIPELINE_RUNS_DIR": str(tmp_path)})
        return int(done.stdout.split()[0])

    assert faults("plain") == 30  # handed back to the OS when freed, faulted in zeroed by the kernel every batch
    # Kept, the heap grows to its size in a few fits (torch's 64-byte-aligned blocks and the OpenMP threads' small
    # ones land between freed ones: 1 to 9 of the first 20 batches in 50 runs), then every batch reuses it.
    assert faults("stage") <= 15
