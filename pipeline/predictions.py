"""The one interface between models, the ensemble and the submission: probability tables by image id.

A model's predictions live in ``data/predictions/<competition>/<model>/fold<k>/``:
``oof.csv`` (the fold's held-out train images) and ``test.csv`` (every test
image), each ``img`` plus one probability column per class. Heads write all
folds in one stage, fine-tuning one stage per fold; both read back the same way.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError


def write_fold(out: Path, classes: tuple[str, ...], oof_ids, oof_proba: np.ndarray, test_ids,
               test_proba: np.ndarray) -> None:
    """Write one fold's out-of-fold and test probabilities into ``out`` (``.../fold<k>``); refuse non-finite
    ones here, where they were made."""
    out.mkdir(parents=True, exist_ok=True)
    for name, ids, proba in (("oof", oof_ids, oof_proba), ("test", test_ids, test_proba)):
        if not np.isfinite(proba).all():
            raise PipelineError(f"{out / name}.csv: non-finite probabilities; not written")
        table = pd.DataFrame(proba, columns=list(classes))
        table.insert(0, "img", list(ids))
        table.to_csv(out / f"{name}.csv", index=False, float_format="%.7g")


def _read(path: Path, classes: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        raise PipelineError(f"{path}: missing; has this model's stage run for every fold?")
    table = pd.read_csv(path, dtype={"img": str})  # ids stay text: Dogs vs. Cats test ids are numbers
    if list(table.columns) != ["img", *classes]:
        raise PipelineError(f"{path}: columns {list(table.columns)[:4]}...; expected img, {', '.join(classes)}")
    try:
        values = table[list(classes)].to_numpy(dtype=float)  # float even when empty (own data without test images)
    except ValueError:
        raise PipelineError(f"{path}: probabilities must be numbers") from None
    if not np.isfinite(values).all() or (values < 0).any() or (values > 1).any():
        raise PipelineError(f"{path}: probabilities must be finite and in [0, 1]")
    return table.set_index("img")


def load_model(folder: Path, folds: pd.DataFrame, classes: tuple[str, ...],
               test_ids: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(out-of-fold, test) probabilities of one model, checked: every train image predicted exactly once,
    by the fold that held it out; test probabilities averaged over folds, in sample-submission order."""
    oof_parts, test_parts = [], []
    for fold in sorted(folds.fold.unique()):
        part = _read(folder / f"fold{fold}" / "oof.csv", classes)
        expected = set(folds.img[folds.fold == fold])
        if set(part.index) != expected or part.index.duplicated().any():
            raise PipelineError(f"{folder}/fold{fold}/oof.csv: does not hold exactly fold {fold}'s held-out images")
        oof_parts.append(part)
        test = _read(folder / f"fold{fold}" / "test.csv", classes)
        if list(test.index) != list(test_ids):
            raise PipelineError(f"{folder}/fold{fold}/test.csv: test images differ from the sample submission")
        test_parts.append(test)
    oof = pd.concat(oof_parts).loc[folds.img]
    return oof, sum(test_parts) / len(test_parts)
