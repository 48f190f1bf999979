"""The run's cost before it starts (`python -m pipeline.plan`, pipeline/training/costs.py): a stage's images times
the per-image seconds of its nets, this machine's calibration timed once and cached, a card's rates scaled by each
net's cost here, stages DVC would skip costing nothing. Arithmetic on given figures (tests/conftest.py); the timing
itself on a tiny net."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pipeline import plan
from pipeline.config import load_params
from pipeline.data.competitions import STATE_FARM
from pipeline.training import costs
from pipeline.training.costs import ImageCost, Machine, gpu_machines, stage_work, this_machine, time_net
from tests.conftest import CALIBRATED, REPO, run

DVC = [sys.executable, "-m", "dvc"]


def test_a_fine_tuning_fold_costs_its_training_epochs_and_its_test_views():
    params = load_params(REPO / "params.yaml")  # the default: lite1 at 176 px, 5 epochs, 4 folds, 3 test views
    recipe = params.finetune.recipe("net")
    work = stage_work("finetune@net-2", params, STATE_FARM, 22424, 79726)
    here = Machine("here", {(recipe.backbone, 176): ImageCost(forward=0.01, train=0.04)}, 0.0, 2, estimate=False)
    trained, predicted = 22424 * 3 / 4 * 5, (22424 / 4 + 79726) * 3
    assert work.seconds(here) == pytest.approx(trained * 0.04 + predicted * 0.01)
    frames = stage_work("frames", params, STATE_FARM, 22424, 79726)
    assert frames.seconds(Machine("here", {}, decode=0.004, cores=2, estimate=False)) == pytest.approx(
        102150 * 0.004 / 2)
    assert stage_work("download", params, STATE_FARM, 22424, 79726) is None  # the network's time, not estimated


def test_a_cards_rates_are_its_reference_rates_scaled_by_each_nets_flops_not_by_its_noisy_seconds_here(tmp_path):
    # lite1's seconds here a third of lite0's (a calibration that ran slow for lite0), its FLOPs half
    here = Machine("here", {("tf_efficientnet_lite0", 224): ImageCost(0.03, 0.09, flops=8e8),
                            ("tf_efficientnet_lite1", 176): ImageCost(0.01, 0.03, flops=4e8)}, 0.004, 2, estimate=False)
    [t4] = [m for m in gpu_machines(here, REPO / "bench" / "gpu_costs.csv") if m.name == "T4"]
    assert t4.estimate and t4.cores == 4
    assert t4.net("tf_efficientnet_lite0", 224).train == pytest.approx(1 / 154)
    assert t4.net("tf_efficientnet_lite1", 176).train == pytest.approx(0.5 / 154)
    assert t4.net("tf_efficientnet_lite1", 176).forward == pytest.approx(0.5 / 480)


def test_the_calibration_is_timed_once_per_machine_and_read_from_the_cache_after(tmp_path, monkeypatch):
    timed = []
    monkeypatch.setattr(costs, "time_net", lambda b, s, batch=16: timed.append((b, s)) or ImageCost(0.01, 0.02))
    first = this_machine([("tf_efficientnet_lite1", 176)], 224, tmp_path / "costs.json")
    assert timed == [("tf_efficientnet_lite0", 224), ("tf_efficientnet_lite1", 176)]  # the reference, then the net
    again = this_machine([("tf_efficientnet_lite1", 176)], 224, tmp_path / "costs.json")
    assert len(timed) == 2 and again == first
    cache = json.loads((tmp_path / "costs.json").read_text())
    assert list(cache) == [costs.machine_key()]
    # a figure cached before FLOPs were counted (seconds only) is timed again, the others read
    cache[costs.machine_key()]["tf_efficientnet_lite1@176"] = [0.01, 0.02]
    (tmp_path / "costs.json").write_text(json.dumps(cache))
    this_machine([("tf_efficientnet_lite1", 176)], 224, tmp_path / "costs.json")
    assert timed[2:] == [("tf_efficientnet_lite1", 176)]


def test_a_figure_timed_beside_other_work_is_used_once_and_never_cached(tmp_path, monkeypatch):
    shares = iter([0.5, 1.0, 1.0])  # the first net timed beside a run (its threads had half their time), then alone
    monkeypatch.setattr(costs, "time_net", lambda b, s, batch=16: ImageCost(0.04, 0.12, 1e9, next(shares)))
    busy = this_machine([("tf_efficientnet_lite1", 176)], 224, tmp_path / "costs.json")
    assert busy.busy and busy.net("tf_efficientnet_lite0", 224) == ImageCost(0.04, 0.12, 1e9)
    cached = json.loads((tmp_path / "costs.json").read_text())[costs.machine_key()]
    assert "tf_efficientnet_lite0@224" not in cached and "tf_efficientnet_lite1@176" in cached
    again = this_machine([("tf_efficientnet_lite1", 176)], 224, tmp_path / "costs.json")  # timed again, alone
    assert not again.busy and "tf_efficientnet_lite0@224" in json.loads((tmp_path / "costs.json").read_text())[
        costs.machine_key()]


def test_timing_a_net_gives_seconds_per_image_a_training_step_dearer_than_a_forward_pass_and_sees_other_work():
    cost = time_net("tf_efficientnet_lite0", 32, batch=2)  # the function itself, not tests/conftest.py's figures
    assert 0 < cost.forward < cost.train < 10
    # lite0 at 224 px is ~0.39 GMACs (its paper's figure): a FLOP is half a multiply-add, counted per image
    assert cost.flops * (224 / 32) ** 2 == pytest.approx(2 * 0.39e9, rel=0.05)
    # beside twice as many busy processes as cores, the timing has at most a third of its threads' time
    hogs = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(2 * (os.cpu_count() or 1))]
    try:
        assert time_net("test_efficientnet", 32, batch=2).share < costs.BUSY
    finally:
        for hog in hogs:
            hog.kill()


def test_plan_prints_every_stage_here_on_a_t4_and_an_h100_and_a_cached_stage_costs_nothing(repo_copy, monkeypatch,
                                                                                           caplog):
    run(DVC + ["repro", "download"], repo_copy)  # the tiny stand-in: the counts are its own, download cached
    params_before = (repo_copy / "params.yaml").read_text()
    monkeypatch.chdir(repo_copy)
    monkeypatch.setattr(sys, "argv", ["plan", "-S", "finetune.models.net.epochs=3"])
    plan.main()
    lines = caplog.text.splitlines()
    header = next(line for line in lines if line.startswith("stage"))
    assert header.split() == ["stage", "images", "here", "H100", "(est.)", "T4", "(est.)"]
    assert next(line for line in lines if line.startswith("download")).split()[1:] == ["cached"] * 3
    # the stand-in's own counts; 3 folds, 3 epochs, one test view; the given per-image seconds (tests/conftest.py)
    train, test = (int(n.replace(",", "")) for n in caplog.text.split(" train and ")[0].split()[-1:] +
                   caplog.text.split(" train and ")[1].split()[:1])
    trained, predicted = train * 2 / 3 * 3, train / 3 + test
    expected = trained * CALIBRATED["train"] + predicted * CALIBRATED["forward"]
    fold = next(line for line in lines if line.startswith("finetune@net-0")).split()
    assert " ".join(fold[2:4]) == plan.duration(expected)
    assert any(line.startswith("total") for line in lines)
    assert (repo_copy / "params.yaml").read_text() == params_before  # the -S value only while DVC looked
