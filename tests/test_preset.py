"""The GPU preset a user copies runs: presets/gpu.yaml laid over params.yaml validates through the loader `dvc
repro` uses, the docs point to it rather than carry a copy, and a preset that would not run is refused whole."""
from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from timm.utils import ModelEmaV3

from pipeline.preset import apply_preset
from pipeline.training.schedule import ema_settings

REPO = Path(__file__).resolve().parents[1]
GPU_PRESET = REPO / "presets" / "gpu.yaml"
CPU_QUALITY = REPO / "presets" / "cpu-quality.yaml"


def test_the_gpu_preset_validates_over_params_yaml_with_frames_sized_for_every_model():
    text, params = apply_preset(GPU_PRESET, REPO / "params.yaml")
    sizes = [params.finetune.recipe(m).image_size for m in params.finetune.models]
    sizes += [b.image_size for b in params.features.backbones.values()]
    assert max(sizes) <= params.frames.size
    preset = yaml.safe_load(GPU_PRESET.read_text())
    assert set(params.finetune.models) == set(preset["finetune"]["models"]) | {"net"}
    assert params.ensemble.models == preset["ensemble"]["models"]
    assert "# Which competition to work on" in text  # params.yaml's comments survive


@pytest.mark.parametrize("preset", sorted((REPO / "presets").glob("*.yaml")), ids=lambda path: path.name)
def test_every_preset_file_validates_over_params_yaml_as_dvc_repro_reads_it(preset):
    # the loader every stage uses, the competition's own checks, every image size within the frame cache, and
    # every model and feature set the ensemble blends defined
    _, params = apply_preset(preset, REPO / "params.yaml")
    sizes = [params.finetune.recipe(m).image_size for m in params.finetune.models]
    sizes += [params.finetune.recipe(m).test_image_size for m in params.finetune.models]
    assert max(sizes + [b.image_size for b in params.features.backbones.values()]) <= params.frames.size
    made = {f"finetune-{m}" for m in params.finetune.models} | {f"heads-{b}" for b in params.features.backbones}
    made |= {f"pseudo-{m}" for m in params.pseudo.models}
    assert set(params.ensemble.models) <= made


def test_the_cpu_quality_preset_validates_and_changes_only_what_its_row_measured():
    _, default = apply_preset(REPO / "params.yaml", REPO / "params.yaml")  # params.yaml over itself: the default
    text, params = apply_preset(CPU_QUALITY, REPO / "params.yaml")
    changed = {name: value for name, value in params.finetune.recipe("net") if
               value != getattr(default.finetune.recipe("net"), name)}
    # lite1e8's size and epochs, and the EMA that row had, which the default has left since (row ema_hl)
    assert changed == {"image_size": 224, "epochs": 8, "ema_decay": 0.99, "ema_half_life": 0.0}
    assert params.finetune.recipe("net").image_size <= params.frames.size
    assert params.model_dump(exclude={"finetune"}) == default.model_dump(exclude={"finetune"})
    assert "presets/cpu-quality.yaml" in (REPO / "README.md").read_text()


def test_the_docs_point_to_the_one_preset_and_carry_no_copy_of_it():
    docs = (REPO / "docs" / "gpu.md").read_text()
    assert "presets/gpu.yaml" in docs
    blocks = re.findall(r"```yaml\n(.*?)```", docs, re.S)
    assert not any("finetune" in block for block in blocks)
    for script in ("gpu_setup.sh", "gpu_repro.sh"):
        assert "presets/gpu.yaml" in (REPO / "bench" / script).read_text()


def test_a_preset_that_would_not_run_is_refused_in_one_line_and_params_yaml_is_left_as_it_was(tmp_path):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (tmp_path / "big.yaml").write_text("finetune:\n  models:\n    net:\n      image_size: 320\n")
    before = (tmp_path / "params.yaml").read_bytes()
    result = subprocess.run([sys.executable, "-m", "pipeline.preset", "big.yaml"], cwd=tmp_path, capture_output=True,
                            text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: params.yaml + big.yaml: finetune.models.net.image_size: 320 is larger than frames.size (224), the "
        "size the frame cache is decoded for; raise frames.size to at least 320"]
    assert (tmp_path / "params.yaml").read_bytes() == before


def _averaged(ema_arguments: dict, steps: int, start: float, marker) -> float:
    """What timm's EMA holds after ``steps`` updates of a one-weight net that starts at ``start`` and holds
    ``marker(step)`` after each step, updated as pipeline/training/trainer.py updates it."""
    net = torch.nn.Linear(1, 1, bias=False)
    net.weight.data.fill_(start)
    ema = ModelEmaV3(net, **ema_arguments)
    for step in range(1, steps + 1):
        net.weight.data.fill_(marker(step))
        ema.update(net, step=step if ema_arguments.get("use_warmup") else None)
    return ema.module.weight.item()


def test_the_gpu_presets_ema_is_the_rows_measured_decay_on_the_development_set_and_the_same_share_at_full_size():
    _, params = apply_preset(GPU_PRESET, REPO / "params.yaml")
    recipe = params.finetune.recipe("net")
    # A fold of the development set (~1,430 training photos at batch 32: 44 steps an epoch) and of State Farm's
    # 22,424 (16,818 a fold: 525 steps an epoch).
    shares, positions, arguments = {}, {}, {}
    for steps_per_epoch in (44, 525):
        arguments[steps_per_epoch] = ema_settings(recipe.ema_decay, recipe.ema_half_life, steps_per_epoch,
                                                  recipe.ema_warmup)
        steps = steps_per_epoch * recipe.epochs
        # the starting weights' part, and where in the run the average sits
        shares[steps_per_epoch] = _averaged(arguments[steps_per_epoch], steps, 1.0, lambda step: 0.0)
        positions[steps_per_epoch] = _averaged(arguments[steps_per_epoch], steps, 0.0, lambda step: step / steps)
    # The rows measured a fixed 0.99 a step (a half-life of 69 steps) on the development set's 44 steps an epoch.
    half_life = math.log(0.5) / math.log(arguments[44]["decay"])
    assert abs(half_life / (math.log(0.5) / math.log(0.99)) - 1) < 0.05 and "use_warmup" not in arguments[44]
    # At 12x the steps the average holds the same share of the starting weights and the same part of the run,
    # where the fixed decay would average only the last ~0.13 epochs.
    assert shares[44] < 0.03 and abs(shares[44] - shares[525]) < 0.002
    assert positions[44] > 0.7 and abs(positions[44] - positions[525]) < 0.01
    assert _averaged({"decay": 0.99}, 525 * recipe.epochs, 0.0, lambda step: step / (525 * recipe.epochs)) > 0.95


def test_the_gpu_preset_fits_one_kaggle_session_on_a_t4_by_the_plans_flop_scaled_estimate(tmp_path, monkeypatch):
    # The estimate `train send` and `python -m pipeline.plan` print, at the competition's official counts: the T4's
    # rate from bench/gpu_costs.csv scaled by each net's forward FLOPs (counted here, the same on every machine;
    # the seconds here only make the "here" column).
    from pipeline.data.competitions import STATE_FARM
    from pipeline.training import costs
    from pipeline.training.backbones import create_backbone

    def flops_only(backbone, size, batch=costs.BATCH):
        return costs.ImageCost(0.02, 0.06, costs.forward_flops(create_backbone(backbone, 10, pretrained=False), size))

    monkeypatch.setattr(costs, "time_net", flops_only)
    monkeypatch.setattr(costs, "CACHE", tmp_path / "costs.json")
    monkeypatch.setattr(costs, "GPU_TABLE", REPO / "bench" / "gpu_costs.csv")
    monkeypatch.chdir(tmp_path)  # no raw data here: the competition's official counts
    _, params = apply_preset(GPU_PRESET, REPO / "params.yaml")
    stages = ["frames", *(f"features@{b}" for b in params.features.backbones)]
    stages += [f"finetune@{m}-{fold}" for m in params.finetune.models for fold in params.finetune.folds]
    seconds, estimate = costs.kaggle_session(params, STATE_FARM, stages)
    hours = sum(seconds.values()) / 3600
    assert estimate and hours <= 9  # a Kaggle session's 12 h, with margin for a T4 never measured
    # the figure the preset cites is this one
    comments = GPU_PRESET.read_text().replace("\n# ", " ")
    [cited] = re.findall(r"on one T4: ([\d.]+) h by `python -m pipeline.plan", comments)
    assert float(cited) == round(hours, 1), hours


def test_the_gpu_presets_row_runs_the_presets_own_settings(tmp_path):
    # bench/levers.py's row gpu_preset, the `dvc exp run -S` values that measure the preset a fold a stage, lays the
    # same params as the file (but features.batch_size: speed, not numbers)
    import importlib.util

    from pipeline.config import load_params
    from pipeline.kaggle.train_run import run_params

    spec = importlib.util.spec_from_file_location("levers", REPO / "bench" / "levers.py")
    levers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(levers)
    laid = tmp_path / "params.yaml"
    laid.write_text((REPO / "params.yaml").read_text())
    run_params(laid, "", levers.ROWS["gpu_preset"])
    _, preset = apply_preset(GPU_PRESET, REPO / "params.yaml")
    row = load_params(laid).model_dump()
    row["features"]["batch_size"] = preset.features.batch_size
    assert row == preset.model_dump()
