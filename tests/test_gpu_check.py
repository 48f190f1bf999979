"""bench/gpu_check.sh, the one prepared command for a lent GPU machine, runs its steps at toy size on a CPU: the
next GPU machine's minutes go to the GPU, not to the script's own bugs (docs/gpu.md, "The GPU check")."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests import conftest
from tests.conftest import REPO

pytestmark = pytest.mark.slow  # the suite inside the suite, and dvc repro of the GPU preset


def test_the_gpu_check_runs_every_step_at_toy_size_and_leaves_its_results_in_at_most_eight_files(tmp_path):
    out = tmp_path / "check"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PIPELINE_RUNS_DIR": str(tmp_path / "runs")}
    # One quick test file (36 tests in seconds) stands in for the quick subset (its own minute of this suite's 7).
    result = subprocess.run(["bash", "bench/gpu_check.sh", "--cpu", "--out", str(out), "--tests",
                             "-n 0 tests/test_bad_params.py"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    files = sorted(p.name for p in out.iterdir())
    assert files == ["bench.log", "env.txt", "junit.xml", "preset.log", "suite.log", "summary.json",
                     "tracebacks.txt"] and all(p.is_file() for p in out.iterdir())
    summary = json.loads((out / "summary.json").read_text())
    assert int(summary["suite"]["tests"]) > 5 and summary["suite"]["failures"] == "0" and summary["failed"] == []
    preset = summary["preset"]
    assert preset["finished"], (out / "preset.log").read_text()[-2000:]
    # The GPU preset's own models went through (the multi-region net too), to a nested CV and a local leaderboard.
    assert {"finetune net --fold 1", "finetune regions3 --fold 1", "ensemble", "submission"} <= set(preset["stages"])
    assert preset["ensemble"]["cv_log_loss"] > 0 and preset["submission"]["private_log_loss"] > 0
    # each on lite0, the one weights package the lent box's carry holds (the preset's own nets are larger)
    assert set(preset["backbones"]) == {"net", "regions3"} and set(preset["backbones"].values()) == {"tf_efficientnet_lite0"}
    assert len(summary["bench_ratios"]) == 3  # features (views on the CPU), fine-tuning (augmented on cpu, device)
    assert len(summary["first_epoch_ratios"]) == 2  # fine-tuning's first epoch against a steady one, each way
    assert len(summary["first_pass_ratios"]) == 1  # the features' first pass against a steady one
    assert len(summary["tiny_model_ms"]) == 2  # the path's own cost with a tiny model: features, fine-tuning
    assert "torch" in (out / "env.txt").read_text()


def test_a_failure_is_written_down_the_moment_it_fails(tmp_path, monkeypatch):
    # What bench/gpu_check.sh reads when the suite is cut off at its time limit before pytest's own summary.
    tracebacks = tmp_path / "tracebacks.txt"
    monkeypatch.setenv("PIPELINE_TRACEBACKS", str(tracebacks))
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    conftest.pytest_runtest_logreport(SimpleNamespace(failed=False, nodeid="tests/a.py::ok", when="call",
                                                      longreprtext=""))
    conftest.pytest_runtest_logreport(SimpleNamespace(failed=True, nodeid="tests/a.py::broken", when="call",
                                                      longreprtext="E   assert 1 == 2"))
    assert tracebacks.read_text() == "=== tests/a.py::broken (call)\nE   assert 1 == 2\n\n"
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")  # a worker's copy of the report: the controller writes it
    conftest.pytest_runtest_logreport(SimpleNamespace(failed=True, nodeid="tests/a.py::again", when="call",
                                                      longreprtext="E"))
    assert "again" not in tracebacks.read_text()


def test_the_photos_for_the_trip_are_half_size_not_a_quarter(tmp_path):
    # bench/gpu_photos.py: the first GPU check got 160x120 photos (sized after PIL's draft had already halved them),
    # below the frame cache's 224 px, and its fine-tuned nets saw upscaled quarter-size images.
    from PIL import Image
    source = tmp_path / "competition"
    (source / "imgs" / "train" / "c0").mkdir(parents=True)
    Image.new("RGB", (64, 48), (90, 120, 30)).save(source / "imgs" / "train" / "c0" / "img_1.jpg")
    (source / "driver_imgs_list.csv").write_text("subject,classname,img\np002,c0,img_1.jpg\n")
    subprocess.run([sys.executable, "bench/gpu_photos.py", str(source), str(tmp_path / "small")], cwd=REPO,
                   check=True, capture_output=True)
    assert Image.open(tmp_path / "small" / "imgs" / "train" / "c0" / "img_1.jpg").size == (32, 24)
    assert (tmp_path / "small" / "driver_imgs_list.csv").read_text() == (source / "driver_imgs_list.csv").read_text()


def test_an_unknown_step_is_refused_in_one_line_before_anything_runs(tmp_path):
    result = subprocess.run(["bash", "bench/gpu_check.sh", "--steps", "suite,warmup", "--out", str(tmp_path / "o")],
                            cwd=REPO, capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (2, "bench/gpu_check.sh: --steps: unknown step warmup (suite, preset, bench)\n")
    assert not (tmp_path / "o").exists()
