"""Folds: no driver in two folds, every class in every fold, same params -> same bytes; stratified without groups."""
from __future__ import annotations


import pandas as pd
import pytest

from pipeline.competitions import STATE_FARM
from pipeline.errors import PipelineError
from pipeline.folds import make_folds
from pipeline.raw_data import train_table


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
