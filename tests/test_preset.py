"""The GPU preset a user copies runs: presets/gpu.yaml laid over params.yaml validates through the loader `dvc
repro` uses, the docs point to it rather than carry a copy, and a preset that would not run is refused whole."""
from __future__ import annotations

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


def test_the_gpu_presets_ema_averages_the_same_late_share_of_a_small_run_and_of_a_large_one():
    _, params = apply_preset(GPU_PRESET, REPO / "params.yaml")
    recipe = params.finetune.recipe("net")
    # A fold of the development set (~1,430 training photos at batch 128: 11 steps an epoch, 88 in all) and of
    # State Farm's 22,424 (16,800 a fold: 131 steps an epoch).
    shares, positions = {}, {}
    for steps_per_epoch in (11, 131):
        arguments = ema_settings(recipe.ema_decay, recipe.ema_half_life, steps_per_epoch)
        steps = steps_per_epoch * recipe.epochs
        shares[steps_per_epoch] = _averaged(arguments, steps, 1.0, lambda step: 0.0)  # the starting weights' part
        positions[steps_per_epoch] = _averaged(arguments, steps, 0.0, lambda step: step / steps)  # where in the run
    assert recipe.epochs * 11 == 88 and shares[11] < 0.01 and shares[131] < 0.01
    assert positions[11] > 0.6 and abs(positions[11] - positions[131]) < 0.05
    # What the preset had before: a decay of 0.998 per step kept most of the starting weights after 66 steps.
    assert _averaged({"decay": 0.998}, 66, 1.0, lambda step: 0.0) > 0.85
