"""params.yaml mistakes stop a stage with one line that names the key."""
from __future__ import annotations

import sys

import pytest
import yaml

from pipeline.config import load_params, parse_params
from pipeline.errors import PipelineError
from tests.conftest import REPO, run, set_params


def default_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_the_shipped_params_load_with_state_farm_from_the_standin():
    params = load_params(REPO / "params.yaml")
    assert params.competition == "state-farm-distracted-driver-detection"
    assert params.data.source == "standin"
    assert 0 <= params.dropout < 1


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda p: p.update(dropuot=p.pop("dropout")), "dropuot"),
        (lambda p: p.update(dropout=1.5), "dropout"),
        (lambda p: p.update(dropout="high"), "dropout"),
        (lambda p: p["folds"].update(n_splits=1), "folds.n_splits"),
        (lambda p: p["folds"].update(n_splits="5"), "folds.n_splits"),
        (lambda p: p["data"].update(source="s3"), "data.source"),
        (lambda p: p["standin"].pop("seed"), "standin.seed"),
        (lambda p: p["standin"].update(widht=64), "standin.widht"),
        (lambda p: p.update(competition="state-farm"), "competition"),
    ],
)
def test_bad_params_raise_one_line_naming_the_key(edit, key):
    params = default_params()
    edit(params)
    with pytest.raises(PipelineError) as error:
        parse_params(params)
    message = str(error.value)
    assert f": {key}: " in message
    assert "\n" not in message


def test_config_object_is_frozen():
    params = load_params(REPO / "params.yaml")
    with pytest.raises(Exception):
        params.folds.n_splits = 3


def test_a_stage_run_with_a_typo_exits_2_with_one_line(repo_copy):
    set_params(repo_copy, folds={"n_splitz": 3})
    result = run([sys.executable, "-m", "pipeline.folds"], repo_copy, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: params.yaml: folds.n_splitz: unknown key"]
