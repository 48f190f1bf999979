"""Folds: no driver in two folds, every class in every fold, same params -> same bytes; stratified without groups."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from pipeline.data.competitions import DOGS_VS_CATS, STATE_FARM
from pipeline.data.near_duplicates import near_duplicate_groups
from pipeline.data.raw_data import train_table
from pipeline.errors import PipelineError
from pipeline.paths import folds_csv
from pipeline.stages.folds import make_folds
from tests.conftest import put_competition, set_params


def labels(tiny_competition) -> pd.DataFrame:
    return train_table(tiny_competition, STATE_FARM)


def test_no_driver_is_in_two_folds_and_every_class_is_in_every_fold(tiny_competition):
    folds = make_folds(labels(tiny_competition), STATE_FARM, n_splits=3, seed=0)
    assert (folds.groupby("group").fold.nunique() == 1).all()
    assert sorted(folds.fold.unique()) == [0, 1, 2]
    assert (folds.groupby("fold").label.nunique() == len(STATE_FARM.classes)).all()
    assert list(folds.columns) == ["img", "label", "group", "fold"]
    assert len(folds) == len(labels(tiny_competition))


def test_more_folds_than_drivers_names_the_key(tiny_competition):
    with pytest.raises(PipelineError, match="folds.n_splits: 6 folds need at least 6 distinct subject"):
        make_folds(labels(tiny_competition), STATE_FARM, n_splits=6, seed=0)


def test_near_duplicate_groups_find_each_cluster_without_chaining_them_together():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 64))
    features = np.repeat(centres, 5, axis=0) + rng.normal(scale=0.1, size=(30, 64))
    # A chain of in-between images from cluster 0 towards cluster 1: "closer than" would join them all.
    chain = np.array([centres[0] + t * (centres[1] - centres[0]) for t in np.linspace(0.15, 0.85, 8)])
    groups = near_duplicate_groups(np.vstack([features, chain]), distance=0.2)
    truth = np.repeat(np.arange(6), 5)
    assert adjusted_rand_score(truth, groups[:30]) == 1.0
    assert len(set(groups[:5]) | set(groups[5:10])) == 2  # the chain did not merge clusters 0 and 1


def test_data_without_groups_gets_near_duplicate_groups_and_no_group_straddles_two_folds(repo_copy, run_stage,
                                                                                         tiny_dogs_vs_cats):
    put_competition(repo_copy, tiny_dogs_vs_cats, DOGS_VS_CATS.slug)
    set_params(repo_copy, competition=DOGS_VS_CATS.slug, augment={"hflip": True},
               folds={"near_duplicate_distance": 0.3})  # 64x48 pets are blurrier than the full stand-in's
    assert run_stage(repo_copy, "features", "tf_efficientnet_lite0")[0] == 0
    status, lines = run_stage(repo_copy, "folds")
    assert status == 0, lines
    folds = pd.read_csv(repo_copy / folds_csv(DOGS_VS_CATS.slug), dtype=str, keep_default_na=False)
    assert (folds.group != "").all() and (folds.groupby("group").fold.nunique() == 1).all()
    [logged] = [line for line in lines if line.startswith("near-duplicate groups:")]
    assert logged == (f"near-duplicate groups: {folds.group.nunique()} groups among {len(folds)} images, the largest "
                      f"{folds.group.value_counts().max()} images")
    assert folds.group.nunique() < len(folds)  # near-identical photos did share groups
