"""Runs at once on one machine share its cores: a stage takes cores // stages running (pipeline/cores.py)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from pipeline import cores
from pipeline.errors import cli


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """A runs folder of its own, no OMP_NUM_THREADS (the suite sets one), torch's thread count restored after."""
    monkeypatch.setenv("PIPELINE_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads = torch.get_num_threads()
    yield tmp_path / "runs"
    torch.set_num_threads(threads)


def test_a_stage_takes_its_share_of_the_cores_and_dead_runs_do_not_count(machine, monkeypatch):
    monkeypatch.setattr(cores, "machine_cores", lambda: 4)
    machine.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (machine / str(other.pid)).touch()  # another run's stage, alive
        (machine / "999999999").touch()  # a stage that died without cleaning up
        seen = []
        cli(lambda: seen.append((cores.running_stages(), torch.get_num_threads())))()
        assert seen == [(2, 2)]  # this stage and the other one: half of 4 cores each
        assert not (machine / "999999999").exists()
        other.kill()
        other.wait()
        assert cores.keep_share() == 4 and torch.get_num_threads() == 4  # alone again: every core
    finally:
        other.kill()


def test_an_explicit_thread_count_wins_and_a_waiting_command_takes_no_share(machine, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cores.share() == 1
    registered = []
    cli(cores=False)(lambda: registered.append(sorted(p.name for p in machine.glob("*"))))()
    assert registered == [[]]
    cli(lambda: registered.append(sorted(p.name for p in machine.glob("*"))))()
    assert registered[1] == [str(os.getpid())]
