"""params.yaml mistakes stop a stage with one line that names the key, before anything is written."""
from __future__ import annotations

import sys

import pydantic
import pytest
import yaml

from pipeline.config import load_params, parse_params
from pipeline.data.competitions import competition_of
from pipeline.errors import PipelineError
from pipeline.paths import features_dir, folds_csv, raw_dir
from tests.conftest import REPO, put_competition, run, set_params

DOWNLOAD = [sys.executable, "-m", "pipeline.stages.download"]


def test_the_shipped_params_load_with_state_farm_from_the_standin():
    params = load_params(REPO / "params.yaml")
    assert params.competition == "state-farm-distracted-driver-detection"
    assert params.data.source == "standin"
    assert 0 <= params.dropout < 1


def test_config_object_is_frozen():
    params = load_params(REPO / "params.yaml")
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        params.folds.n_splits = 3


def _one_line_error(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda p: p.update(dropuot=p.pop("dropout")), "params.yaml: dropuot: unknown key (did you mean 'dropout'?)"),
        (lambda p: p.update(dropout=1.5), "params.yaml: dropout: Input should be less than 1"),
        (lambda p: p["finetune"]["defaults"].update(ema_decay=0.99),
         "params.yaml: finetune.models.net: ema_decay and ema_half_life are both set; give one and set the other to 0"),
        (lambda p: p.update(dropout="high"), "params.yaml: dropout: Input should be a valid number"),
        (lambda p: p["folds"].update(n_splits=1), "params.yaml: folds.n_splits: Input should be greater than or equal to 2"),
        (lambda p: p["folds"].update(n_splits="5"), "params.yaml: folds.n_splits: Input should be a valid integer"),
        (lambda p: p["data"].update(source="s3"), "params.yaml: data.source: Input should be 'standin', 'kaggle' or 'local'"),
        (lambda p: p["standin"].pop("seed"), "params.yaml: standin.seed: missing key"),
        (lambda p: p["standin"].update(widht=64), "params.yaml: standin.widht: unknown key"),
        (lambda p: p.update(competition="state-farm"), "params.yaml: competition: unknown competition 'state-farm'"),
        (lambda p: p["augment"].update(hflip=True), "params.yaml: augment.hflip: state-farm-distracted-driver-detection "
                                                    "classes change under a horizontal flip"),
        (lambda p: p["finetune"].update(augment_on="gpu"),
         "params.yaml: finetune.augment_on: Input should be 'auto', 'cpu' or 'device'"),
        (lambda p: p["finetune"].update(folds=[0, 7]), "params.yaml: finetune.folds: [0, 7] must be distinct folds below"),
        (lambda p: p["finetune"]["models"]["net"].update(epocs=3),
         "params.yaml: finetune.models.net.epocs: unknown key (did you mean 'epochs'?)"),
        (lambda p: p["finetune"]["defaults"].pop("lr"),
         "params.yaml: finetune.models.net.lr: missing key (set it there or in finetune.defaults)"),
        (lambda p: p["finetune"]["models"]["net"].update(image_size=8),
         "params.yaml: finetune.models.net.image_size: Input should be greater than or equal to 32"),
        (lambda p: p["finetune"]["models"]["net"].update(regions=["face"]),
         "params.yaml: finetune.models.net.regions.0: Input should be 'full', 'driver', 'head'"),
        (lambda p: p["finetune"]["models"]["net"].update(regions=["head", "head"]),
         "params.yaml: finetune.models.net.regions: a region is listed twice"),
        (lambda p: p["ensemble"].update(models=["finetune-lite9"]),
         "params.yaml: ensemble.models: 'finetune-lite9' is not a model of this params.yaml"),
        (lambda p: p["ensemble"].update(neighbour_features=["finetune-lite9"]),
         "params.yaml: ensemble.neighbour_features: 'finetune-lite9' is neither a backbone nor a fine-tuned model"),
        (lambda p: p["ensemble"].update(models=["heads-tf_efficientnet_lite0"], neighbour_features=["finetune-net"]),
         "params.yaml: ensemble.neighbour_features: none of ['finetune-net'] is a backbone or a model of "
         "ensemble.models"),
        (lambda p: p["augment"].update(scale=[1.1, 0.9]), "params.yaml: augment.scale: Value error, expected [low, high]"),
        (lambda p: p.update(competition="own-data", data={**p["data"], "source": "kaggle"}),
         "params.yaml: data.source: own-data is not on Kaggle"),
        (lambda p: p.update(competition="own-data", data={**p["data"], "source": "local"}),
         "params.yaml: own_data.train_dir: empty"),
        (lambda p: p["data"].update(groups_csv="pets.csv"), "params.yaml: data.group_column: give both"),
        (lambda p: p["data"].update(groups_csv="drivers.csv", group_column="driver"),
         "params.yaml: data.groups_csv: state-farm-distracted-driver-detection groups its images by subject already"),
        (lambda p: p.update(params_version=2), "params.yaml: params_version: unknown key"),
        (lambda p: p["folds"].update(group_by="near_duplicates"), "params.yaml: folds.group_by: near_duplicates is "
         "for data without groups; state-farm-distracted-driver-detection has subject"),
        (lambda p: p["folds"].update(near_duplicate_backbone="resnet50"),
         "params.yaml: folds.near_duplicate_backbone: 'resnet50' is not under features.backbones"),
        (lambda p: p["data"].update(sample=0), "params.yaml: data.sample: Input should be greater than 0"),
    ],
)
def test_a_bad_param_is_one_error_naming_the_key(edit, expected):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    edit(params)
    with pytest.raises(PipelineError) as error:
        competition_of(parse_params(params))  # types and ranges, then how the params fit their competition
    assert str(error.value).startswith(expected), str(error.value)


def test_a_bad_param_stops_the_stage_with_one_line_and_nothing_is_written(repo_copy):
    set_params(repo_copy, dropuot=0.3)
    params = yaml.safe_load((repo_copy / "params.yaml").read_text())
    del params["dropout"]
    (repo_copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    error = _one_line_error(run(DOWNLOAD, repo_copy, check=False))
    assert error == "error: params.yaml: dropuot: unknown key (did you mean 'dropout'?)"
    assert not (repo_copy / "data").exists()


def _one_line(outcome: tuple[int, list[str]]) -> str:
    status, lines = outcome
    assert status == 2 and len(lines) == 1, lines
    return lines[0]


def test_yaml_that_does_not_parse_names_the_file(repo_copy, run_stage):
    (repo_copy / "params.yaml").write_text("dropout: [0.5\n")
    assert _one_line(run_stage(repo_copy, "download")).startswith("error: params.yaml: not valid YAML")


def test_more_folds_than_drivers_names_the_key_and_writes_no_folds(repo_copy, tiny_competition, run_stage):
    put_competition(repo_copy, tiny_competition)
    set_params(repo_copy, folds={"n_splits": 6}, finetune={"folds": [0]})
    assert _one_line(run_stage(repo_copy, "folds")) == (
        "error: params.yaml: folds.n_splits: 6 folds need at least 6 distinct subject values; the data has 5")
    assert not (repo_copy / folds_csv("state-farm-distracted-driver-detection")).exists()


def test_a_backbone_timm_does_not_know_names_the_key(repo_copy, tiny_competition, run_stage):
    put_competition(repo_copy, tiny_competition)
    set_params(repo_copy, features={"backbones": {"efficientnet_b99": {"image_size": 64}}})
    error = _one_line(run_stage(repo_copy, "features", "efficientnet_b99"))
    assert error.startswith("error: params.yaml: features.backbones.efficientnet_b99: timm has no model")
    assert not (repo_copy / features_dir("state-farm-distracted-driver-detection", "efficientnet_b99")).exists()
    assert (repo_copy / raw_dir("state-farm-distracted-driver-detection")).is_dir()
