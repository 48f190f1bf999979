"""folds stage: split the training images into k folds, never splitting a group, stratified by class.

A random split leaks where images come in groups: frames of one State Farm
driver and class are near-duplicates, so validation must hold out whole
drivers, as the test set does. Competitions without groups (Dogs vs. Cats, own
data without a groups CSV) get plain stratified folds. Reads params
``competition`` and ``folds`` and the training labels; writes
``data/folds/<competition>/folds.csv`` (img, label, group, fold).

    python -m pipeline.stages.folds
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from pipeline.atomic import atomic_file
from pipeline.compute.cores import stage_command
from pipeline.config import load_params
from pipeline.data.competitions import CompetitionSpec, competition_of
from pipeline.data.near_duplicates import near_duplicate_groups
from pipeline.data.tables import RunImages
from pipeline.errors import PipelineError
from pipeline.paths import features_dir, folds_csv
from pipeline.training.feature_cache import FeatureSet, load_feature_set

log = logging.getLogger(__name__)


def make_folds(train: pd.DataFrame, spec: CompetitionSpec, n_splits: int, seed: int) -> pd.DataFrame:
    """``train`` (img, label, group) with a fold per image; same input, same folds."""
    table = train[["img", "label", "group"]].sort_values("img").reset_index(drop=True)
    grouped = (table.group != "").all()
    if grouped and n_splits > table.group.nunique():
        raise PipelineError(f"params.yaml: folds.n_splits: {n_splits} folds need at least {n_splits} "
                            f"distinct {spec.group_column or 'group'} values; the data has {table.group.nunique()}")
    smallest = table.label.value_counts().min()
    if not grouped and n_splits > smallest:
        raise PipelineError(f"params.yaml: folds.n_splits: {n_splits} folds need at least {n_splits} images "
                            f"of every class; the smallest class has {smallest}")
    if grouped:
        splits = StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed).split(table, table.label, table.group)
    else:
        splits = StratifiedKFold(n_splits, shuffle=True, random_state=seed).split(table, table.label)
    table["fold"] = -1
    for fold, (_, held_out) in enumerate(splits):
        table.loc[held_out, "fold"] = fold
    return table


def with_near_duplicate_groups(train: pd.DataFrame, cached: FeatureSet, distance: float) -> pd.DataFrame:
    """``train`` with each image's group the cluster of near-duplicates it falls in (features averaged over
    views), so that no pet, patient or scene straddles two folds when the data names none."""
    rows = pd.Series(range(len(cached.train_ids)), index=cached.train_ids).loc[train.img].to_numpy()
    clusters = near_duplicate_groups(np.asarray(cached.train_views, np.float32).mean(0)[rows], distance)
    sizes = np.bincount(clusters)
    log.info("near-duplicate groups: %d groups among %d images, the largest %d images", len(np.unique(clusters)),
             len(train), sizes.max())
    return train.assign(group=[f"near{c}" for c in clusters])


@stage_command
def main() -> None:
    params = load_params()
    spec = competition_of(params)
    train = RunImages.load(spec.slug).train
    given = (train.group != "").all()
    if params.folds.group_by == "near_duplicates" or (params.folds.group_by == "auto" and not given):
        cached = load_feature_set(features_dir(spec.slug, params.folds.near_duplicate_backbone))
        train = with_near_duplicate_groups(train, cached, params.folds.near_duplicate_distance)
    folds = make_folds(train, spec, params.folds.n_splits, params.folds.seed)
    target = folds_csv(spec.slug)
    with atomic_file(target) as tmp:
        folds.to_csv(tmp, index=False)
    for fold, part in folds.groupby("fold"):
        log.info("fold %d: %d images, %d groups, %d classes", fold, len(part), part.group.nunique(),
                 part.label.nunique())
    log.info("wrote %s", target)


if __name__ == "__main__":
    main()
