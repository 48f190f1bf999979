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
from pipeline.training.costs import (ImageCost, Machine, gpu_machines, stage_work, this_machine, time_decode, time_head,
                                     time_md5, time_neighbours, time_net)
from tests.conftest import CALIBRATED, REPO, run

DVC = [sys.executable, "-m", "dvc"]


def test_a_fine_tuning_fold_costs_its_training_epochs_and_its_test_views():
    params = load_params(REPO / "params.yaml")  # the default: lite1 at 176 px, 5 epochs, 4 folds, 3 test views
    recipe = params.finetune.recipe("net")
    work = stage_work("finetune@net-2", params, STATE_FARM, 22424, 79726)
    here = Machine("here", {(recipe.backbone, 176): ImageCost(forward=0.01, train=0.04)}, 0.0, 2, estimate=False)
    trained, predicted = 22424 * 3 / 4 * 5, (22424 / 4 + 79726) * 3
    assert work.seconds(here) == pytest.approx(trained * 0.04 + predicted * 0.01)
    # frames: made on every core, then hashed by DVC (320x240 frames of 640x480 photos at frames.size 224)
    frames = stage_work("frames", params, STATE_FARM, 22424, 79726)
    assert frames.seconds(Machine("here", {}, decode=0.004, cores=2, estimate=False, md5=5e8)) == pytest.approx(
        102150 * 0.004 / 2 + 102150 * 240 * 320 * 3 / 5e8)
    # heads: 4 folds on 3/4 of the train images, 10 epochs, one view; again on a random split
    heads = stage_work("heads@tf_efficientnet_lite0", params, STATE_FARM, 22424, 79726)
    with_heads = Machine("here", {}, 0.0, 2, estimate=False, heads={"tf_efficientnet_lite0": 3e-5})
    assert heads.seconds(with_heads) == pytest.approx(22424 * 3 * 10 * 2 * 3e-5)
    # the ensemble: neighbours searched in each space within each fold, and among the test images in the widest
    ensemble = stage_work("ensemble", params, STATE_FARM, 22424, 79726)
    spaces = {("tf_efficientnet_lite0", 1): 4e-8, (recipe.backbone, 1): 5e-8}
    searching = Machine("here", {}, 0.0, 2, estimate=False, neighbours=spaces)
    within_folds = 4 * (22424 / 4) ** 2
    assert ensemble.seconds(searching) == pytest.approx(within_folds * (4e-8 + 5e-8) + 79726 ** 2 * 4e-8)
    regions = params.model_copy(update={"finetune": params.finetune.model_copy(update={"models": {
        "net": params.finetune.models["net"].model_copy(update={"regions": ["full", "head", "hands"]})}})})
    searching = Machine("here", {}, 0.0, 2, estimate=False, neighbours={**spaces, (recipe.backbone, 3): 1.5e-7})
    assert stage_work("ensemble", regions, STATE_FARM, 22424, 79726).seconds(searching) == pytest.approx(
        within_folds * (4e-8 + 1.5e-7) + 79726 ** 2 * 1.5e-7)  # the net over 3 regions: 3x as wide
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
    params = load_params(REPO / "params.yaml")  # lite0 224 px features (and its heads), lite1 176 px fine-tuned
    timed = []
    monkeypatch.setattr(costs, "time_net", lambda b, s, batch=16: timed.append((b, s)) or ImageCost(0.01, 0.02))
    monkeypatch.setattr(costs, "time_head", lambda b, hidden, batch: timed.append((b, hidden, batch)) or (3e-5, 1.0))
    first = this_machine(params, tmp_path / "costs.json")
    # the reference (lite0 at 224 px, the features' net here too), the fine-tuned net, the features' head
    assert timed == [("tf_efficientnet_lite0", 224), ("tf_efficientnet_lite1", 176),
                     ("tf_efficientnet_lite0", 256, 128)]
    again = this_machine(params, tmp_path / "costs.json")
    assert len(timed) == 3 and again == first
    assert (again.decode, again.md5, again.heads) == (CALIBRATED["decode"], CALIBRATED["md5"], {
        "tf_efficientnet_lite0": 3e-5})
    cache = json.loads((tmp_path / "costs.json").read_text())
    assert list(cache) == [costs.machine_key()]
    # a figure an older version cached (timed contiguous, no FLOPs) is not read: the net is timed again, the others read
    mine = cache[costs.machine_key()]
    mine["tf_efficientnet_lite1@176"] = mine.pop("tf_efficientnet_lite1@176@channels_last")[:2]
    (tmp_path / "costs.json").write_text(json.dumps(cache))
    this_machine(params, tmp_path / "costs.json")
    assert timed[3:] == [("tf_efficientnet_lite1", 176)]
    # another head (hidden units, batch) is another figure
    this_machine(params.model_copy(update={"heads": params.heads.model_copy(update={"hidden": 512})}),
                 tmp_path / "costs.json")
    assert timed[4:] == [("tf_efficientnet_lite0", 512, 128)]


def test_a_figure_timed_beside_other_work_is_used_once_and_never_cached(tmp_path, monkeypatch):
    params = load_params(REPO / "params.yaml")
    shares = iter([0.5, 1.0, 1.0])  # the first net timed beside a run (its threads had half their time), then alone
    monkeypatch.setattr(costs, "time_net", lambda b, s, batch=16: ImageCost(0.04, 0.12, 1e9, next(shares)))
    monkeypatch.setattr(costs, "time_md5", lambda: (2e8, 0.4))  # MD5 beside a run too
    busy = this_machine(params, tmp_path / "costs.json")
    assert busy.busy and busy.net("tf_efficientnet_lite0", 224) == ImageCost(0.04, 0.12, 1e9) and busy.md5 == 2e8
    cached = json.loads((tmp_path / "costs.json").read_text())[costs.machine_key()]
    assert [name.rsplit("@", 1)[0] for name in cached if name.startswith("tf_")] == ["tf_efficientnet_lite1@176"]
    assert "md5" not in cached
    monkeypatch.setattr(costs, "time_md5", lambda: (7e8, 1.0))
    again = this_machine(params, tmp_path / "costs.json")  # timed again, alone
    assert not again.busy and again.md5 == 7e8 and "tf_efficientnet_lite0@224@channels_last" in json.loads(
        (tmp_path / "costs.json").read_text())[costs.machine_key()]


def test_timing_a_net_gives_seconds_per_image_a_training_step_dearer_than_a_forward_pass_and_sees_other_work():
    cost = time_net("tf_efficientnet_lite0", 32, batch=2)  # the function itself, not tests/conftest.py's figures
    assert 0 < cost.forward < cost.train < 10
    # lite0 at 224 px is ~0.39 GMACs (its paper's figure): a FLOP is half a multiply-add, counted per image
    assert cost.flops * (224 / 32) ** 2 == pytest.approx(2 * 0.39e9, rel=0.05)
    # a frame as the frames stage's workers make it, MD5, a head's step: seconds of the right order, all timed alone
    (frame, frame_share), (md5, md5_share), (head, head_share), (pair, pair_share) = (
        time_decode(224, images=8), time_md5(8), time_head("test_efficientnet", 16, 8),
        time_neighbours("test_efficientnet", 2, rows=256))
    assert 1e-4 < frame < 0.1 and 1e7 < md5 < 1e11 and 0 < head < 0.01 and 0 < pair < 1e-4
    assert min(frame_share, md5_share, head_share, pair_share) > 0
    # beside twice as many busy processes as cores, the timing has at most a third of its threads' time
    hogs = [subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(2 * (os.cpu_count() or 1))]
    try:
        assert time_net("test_efficientnet", 32, batch=2).share < costs.BUSY
    finally:
        for hog in hogs:
            hog.kill()


def test_plan_prints_each_stage_here_on_a_t4_and_an_h100_a_cached_one_free_unless_upstream_runs(repo_copy, monkeypatch,
                                                                                         caplog):
    run(DVC + ["repro", "frames"], repo_copy)  # the tiny stand-in: the counts are its own, download..frames cached
    params_before = (repo_copy / "params.yaml").read_text()
    monkeypatch.chdir(repo_copy)
    # a changed seed re-runs the sample stage, and with it frames, cached but downstream of it
    monkeypatch.setattr(sys, "argv", ["plan", "-S", "finetune.models.net.epochs=3", "-S", "data.sample_seed=1"])
    plan.main()
    lines = caplog.text.splitlines()
    header = next(line for line in lines if line.startswith("stage"))
    assert header.split() == ["stage", "images", "here", "H100", "(est.)", "T4", "(est.)"]
    assert next(line for line in lines if line.startswith("download")).split()[1:] == ["cached"] * 3
    assert "cached" not in next(line for line in lines if line.startswith("sample"))
    assert "cached" not in next(line for line in lines if line.startswith("frames"))
    # the stand-in's own counts; 3 folds, 3 epochs, one test view; the given per-image seconds (tests/conftest.py)
    train, test = (int(n.replace(",", "")) for n in caplog.text.split(" train and ")[0].split()[-1:] +
                   caplog.text.split(" train and ")[1].split()[:1])
    trained, predicted = train * 2 / 3 * 3, train / 3 + test
    expected = trained * CALIBRATED["train"] + predicted * CALIBRATED["forward"]
    fold = next(line for line in lines if line.startswith("finetune@net-0")).split()
    assert " ".join(fold[2:4]) == plan.duration(expected)
    assert any(line.startswith("total") for line in lines)
    assert (repo_copy / "params.yaml").read_text() == params_before  # the -S value only while DVC looked
