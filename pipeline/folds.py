"""folds stage: split the training images into k folds by driver, stratified by class.

A random split leaks: frames of one driver and class are near-duplicates, so
validation must hold out whole drivers, as the test set does. Reads params
``competition`` and ``folds`` and the labels CSV; writes
``data/folds/<competition>/driver_folds.csv`` (img, classname, subject, fold).

    python -m pipeline.folds
"""
from __future__ import annotations

import logging

import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from pipeline.atomic import atomic_file
from pipeline.competitions import CompetitionSpec, get_spec
from pipeline.config import load_params
from pipeline.errors import PipelineError, cli
from pipeline.paths import folds_csv, raw_dir
from pipeline.raw_data import load_labels

log = logging.getLogger(__name__)


def make_folds(labels: pd.DataFrame, spec: CompetitionSpec, n_splits: int, seed: int) -> pd.DataFrame:
    """Assign each image a fold so that no group (driver) spans two folds; same input, same folds."""
    table = labels[[spec.id_column, spec.label_column, spec.group_column]].sort_values(spec.id_column)
    table = table.reset_index(drop=True)
    n_groups = table[spec.group_column].nunique()
    if n_splits > n_groups:
        raise PipelineError(f"params.yaml: folds.n_splits: {n_splits} folds need at least {n_splits} "
                            f"distinct {spec.group_column} values; the data has {n_groups}")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    table["fold"] = -1
    for fold, (_, held_out) in enumerate(splitter.split(table, table[spec.label_column], table[spec.group_column])):
        table.loc[held_out, "fold"] = fold
    return table


@cli
def main() -> None:
    params = load_params()
    spec = get_spec(params.competition)
    folds = make_folds(load_labels(raw_dir(spec.slug), spec), spec, params.folds.n_splits, params.folds.seed)
    target = folds_csv(spec.slug)
    with atomic_file(target) as tmp:
        folds.to_csv(tmp, index=False)
    for fold, part in folds.groupby("fold"):
        log.info("fold %d: %d images, %d %s, %d classes", fold, len(part), part[spec.group_column].nunique(),
                 spec.group_column, part[spec.label_column].nunique())
    log.info("wrote %s", target)


if __name__ == "__main__":
    main()
