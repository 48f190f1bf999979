"""Sample runs: a fraction of whole groups (class mix kept) and of the test images, deterministic; every later
stage works on the sample, which reports CV metrics and writes no submission."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.data.competitions import STATE_FARM
from pipeline.paths import features_dir, sample_dir
from pipeline.stages.sample import keep_groups, keep_test
from pipeline.training.feature_cache import load_feature_set
from tests.conftest import put_competition, set_params


def _groups_with_their_own_classes(n_groups: int = 40) -> pd.DataFrame:
    """Each group has mostly one class (pets, patients): a careless sample would skew the class mix."""
    rng = np.random.default_rng(0)
    rows = [(f"i{g}_{j}", f"k{(g + (j % 5 == 0)) % 4}", f"g{g}") for g in range(n_groups)
            for j in range(int(rng.integers(5, 30)))]
    return pd.DataFrame(rows, columns=["img", "label", "group"])


def test_a_sample_keeps_whole_groups_in_the_asked_fraction_with_the_class_mix_and_the_same_every_time():
    train = _groups_with_their_own_classes()
    kept = keep_groups(train, 0.25, seed=3)
    assert (train[kept].group.nunique(), train[~kept].group.nunique()) == (10, 30)  # round(0.25 * 40) groups
    assert set(train[kept].group).isdisjoint(train[~kept].group)  # no group split
    mix, whole = (train[kept].label.value_counts(normalize=True), train.label.value_counts(normalize=True))
    assert (mix - whole).abs().max() < 0.05
    assert (keep_groups(train, 0.25, seed=3) == kept).all() and not (keep_groups(train, 0.25, seed=4) == kept).all()
    assert keep_groups(train, 1.0, seed=3).all()


def test_without_groups_each_image_is_its_own_and_the_test_sample_keeps_its_order():
    train = _groups_with_their_own_classes().assign(group="")
    assert keep_groups(train, 0.1, seed=0).sum() == round(0.1 * len(train))
    kept = keep_test(1000, 0.25, seed=0)
    assert kept.sum() == 250 and (keep_test(1000, 0.25, seed=0) == kept).all()
    assert keep_test(3, 0.01, seed=0).sum() == 1 and keep_test(0, 0.5, seed=0).sum() == 0


def test_a_sample_run_reports_cv_on_the_sample_and_writes_no_submission(repo_copy, tiny_competition, run_stage):
    put_competition(repo_copy, tiny_competition)
    set_params(repo_copy, data={"sample": 0.6}, ensemble={"models": ["heads-tf_efficientnet_lite0"]})
    logs = {}
    for stage in (["sample"], ["frames"], ["features", "tf_efficientnet_lite0"], ["folds"],
                  ["heads", "tf_efficientnet_lite0"], ["ensemble"], ["submission"]):
        status, logs[stage[0]] = run_stage(repo_copy, *stage)
        assert status == 0, (stage, logs[stage[0]])
    train = pd.read_csv(repo_copy / sample_dir(STATE_FARM.slug) / "train.csv")
    test = pd.read_csv(repo_copy / sample_dir(STATE_FARM.slug) / "test.csv")
    assert train.group.nunique() == 3 and len(test) == round(0.6 * 40)  # 3 of 5 drivers; 24 of 40 test images
    features = load_feature_set(repo_copy / features_dir(STATE_FARM.slug, "tf_efficientnet_lite0"))
    assert sorted(features.train_ids) == sorted(train.img) and features.test_ids == list(test.img)
    [said] = [line for line in logs["submission"] if "no submission written" in line]
    assert said.startswith("data.sample=0.6: a sample run (24 of 40 test images); CV multiclass_log_loss ")
    assert not list((repo_copy / "submissions").glob("*.csv"))
    metrics = json.loads((repo_copy / "metrics" / "submission" / "metrics.json").read_text())
    assert metrics["file"] == "" and metrics["cv_log_loss"] > 0 and "leaderboard_log_loss" in metrics


def test_a_sample_with_fewer_groups_than_folds_says_what_to_change(repo_copy, tiny_competition, run_stage):
    put_competition(repo_copy, tiny_competition)
    set_params(repo_copy, data={"sample": 0.3})
    status, lines = run_stage(repo_copy, "sample")
    assert status == 2 and lines == [
        "error: params.yaml: data.sample: 0.3 keeps 2 of 5 subject groups, fewer than folds.n_splits=3; raise "
        "data.sample to at least 0.60 or lower folds.n_splits"]


@pytest.mark.parametrize("value", [0, 1.5, "half"])
def test_a_sample_fraction_outside_0_to_1_is_refused(value):
    from pipeline.config import parse_params
    from pipeline.errors import PipelineError
    from tests.conftest import REPO
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["sample"] = value
    with pytest.raises(PipelineError, match="params.yaml: data.sample: "):
        parse_params(params)
