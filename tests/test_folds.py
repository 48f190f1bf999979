"""Driver-grouped folds: no driver in two folds, every class in every fold, same params -> same bytes."""
from __future__ import annotations

import shutil
import sys

import pandas as pd
import pytest

from pipeline.competitions import STATE_FARM
from pipeline.errors import PipelineError
from pipeline.folds import make_folds
from pipeline.paths import folds_csv, raw_dir
from tests.conftest import run, set_params


def labels(tiny_competition) -> pd.DataFrame:
    return pd.read_csv(tiny_competition / "driver_imgs_list.csv")


def test_no_driver_is_in_two_folds_and_every_class_is_in_every_fold(tiny_competition):
    folds = make_folds(labels(tiny_competition), STATE_FARM, n_splits=3, seed=0)
    assert (folds.groupby("subject").fold.nunique() == 1).all()
    assert sorted(folds.fold.unique()) == [0, 1, 2]
    assert (folds.groupby("fold").classname.nunique() == len(STATE_FARM.classes)).all()
    assert list(folds.columns) == ["img", "classname", "subject", "fold"]
    assert len(folds) == len(labels(tiny_competition))


def test_more_folds_than_drivers_names_the_key(tiny_competition):
    with pytest.raises(PipelineError, match="folds.n_splits: 6 folds need at least 6 distinct subject"):
        make_folds(labels(tiny_competition), STATE_FARM, n_splits=6, seed=0)


def test_the_stage_writes_byte_identical_folds_for_identical_params(tiny_competition, repo_copy):
    shutil.copytree(tiny_competition, repo_copy / raw_dir(STATE_FARM.slug))
    run([sys.executable, "-m", "pipeline.folds"], repo_copy)
    first = (repo_copy / folds_csv(STATE_FARM.slug)).read_bytes()
    run([sys.executable, "-m", "pipeline.folds"], repo_copy)
    assert (repo_copy / folds_csv(STATE_FARM.slug)).read_bytes() == first
    set_params(repo_copy, folds={"seed": 1})
    run([sys.executable, "-m", "pipeline.folds"], repo_copy)
    assert (repo_copy / folds_csv(STATE_FARM.slug)).read_bytes() != first
