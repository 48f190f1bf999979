"""The one interface between models, the ensemble and the submission: probability tables by image id.

A table is a CSV with ``img`` and one probability column per class. A model's
predictions live in ``data/predictions/<competition>/<model>/fold<k>/``:
``oof.csv`` (the fold's held-out train images) and ``test.csv`` (every test
image). Heads write all folds in one stage, fine-tuning one stage per fold; the
ensemble writes its blend in the same format. ``write_table`` and
``read_table`` are the only writer and reader of these files.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import PipelineError
from pipeline.paths import fold_name


def write_table(path: Path, classes: tuple[str, ...], ids, proba: np.ndarray) -> None:
    """Write one probability table; refuse non-finite values here, where they were made."""
    if not np.isfinite(proba).all():
        raise PipelineError(f"{path}: non-finite probabilities; not written")
    table = pd.DataFrame(proba, columns=list(classes))
    table.insert(0, "img", list(ids))
    table.to_csv(path, index=False, float_format="%.7g")


def read_table(path: Path, classes: tuple[str, ...]) -> pd.DataFrame:
    """A probability table indexed by image id (ids as text: Dogs vs. Cats test ids are numbers), checked."""
    if not path.is_file():
        raise PipelineError(f"{path}: missing; has the stage that writes it run for every fold?")
    table = pd.read_csv(path, dtype={"img": str}, keep_default_na=False)
    if list(table.columns) != ["img", *classes]:
        raise PipelineError(f"{path}: columns {list(table.columns)[:4]}...; expected img, {', '.join(classes)}")
    try:
        values = table[list(classes)].to_numpy(dtype=float)  # float even when empty (own data without test images)
    except ValueError:
        raise PipelineError(f"{path}: probabilities must be numbers") from None
    if not np.isfinite(values).all() or (values < 0).any() or (values > 1).any():
        raise PipelineError(f"{path}: probabilities must be finite and in [0, 1]")
    return table.set_index("img")


def write_fold(out: Path, classes: tuple[str, ...], oof_ids, oof_proba: np.ndarray, test_ids,
               test_proba: np.ndarray) -> None:
    """One fold's out-of-fold and test probabilities into ``out`` (``.../fold<k>``)."""
    out.mkdir(parents=True, exist_ok=True)
    write_table(out / "oof.csv", classes, oof_ids, oof_proba)
    write_table(out / "test.csv", classes, test_ids, test_proba)


def load_model(folder: Path, folds: pd.DataFrame, classes: tuple[str, ...],
               test_ids: list[str]) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """(out-of-fold probabilities, each fold's test probabilities) of one model, checked: every train image
    predicted exactly once, by the fold that held it out; test images in sample-submission order."""
    oof_parts, test_parts = [], []
    for fold in sorted(folds.fold.unique()):
        fold_folder = folder / fold_name(fold)
        part = read_table(fold_folder / "oof.csv", classes)
        if set(part.index) != set(folds.img[folds.fold == fold]) or part.index.duplicated().any():
            raise PipelineError(f"{fold_folder}/oof.csv: does not hold exactly fold {fold}'s held-out images")
        oof_parts.append(part)
        test = read_table(fold_folder / "test.csv", classes)
        if list(test.index) != list(test_ids):
            raise PipelineError(f"{fold_folder}/test.csv: test images differ from the sample submission")
        test_parts.append(test)
    return pd.concat(oof_parts).loc[folds.img], test_parts


def write_trained_on(out: Path, labelled_ids, pseudo_labelled_ids=()) -> None:
    """``trained_on.csv``: every image a fine-tuned fold trained on (``labelled``, or ``pseudo`` for a student's
    test images), the record that a leak check reads rather than assumes."""
    pd.DataFrame({"img": [*labelled_ids, *pseudo_labelled_ids],
                  "targets": ["labelled"] * len(labelled_ids) + ["pseudo"] * len(pseudo_labelled_ids)}).to_csv(
        out / "trained_on.csv", index=False)


def write_embeddings(out: Path, oof_embeddings: np.ndarray, test_embeddings: np.ndarray) -> None:
    """A fine-tuned net's pooled pre-logit embeddings (float16), rows in ``oof.csv`` / ``test.csv`` order: where
    the ensemble finds neighbours by what the net learned (pose) rather than by ImageNet features (driver)."""
    for name, values in (("oof_embeddings.npy", oof_embeddings), ("test_embeddings.npy", test_embeddings)):
        if not np.isfinite(values).all():
            raise PipelineError(f"{out / name}: non-finite embeddings; not written")
        np.save(out / name, values.astype(np.float16))


def load_embeddings(folder: Path, folds: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(train embeddings in ``folds`` row order, each from the fold model that held it out; test embeddings
    averaged over the fold models) of one fine-tuned model. Every fold's embeddings are scaled to unit length
    first, so that cosine neighbours weigh each fold model alike."""
    train, tests = None, []
    for fold in sorted(folds.fold.unique()):
        fold_folder = folder / fold_name(fold)
        if not (fold_folder / "oof_embeddings.npy").is_file():
            raise PipelineError(f"{fold_folder}/oof_embeddings.npy: missing; only fine-tuned models write embeddings")
        part = unit_length(np.load(fold_folder / "oof_embeddings.npy"))
        train = np.zeros((len(folds), part.shape[1]), np.float32) if train is None else train
        ids = pd.read_csv(fold_folder / "oof.csv", dtype={"img": str}, usecols=["img"], keep_default_na=False).img
        train[pd.Series(range(len(folds)), index=folds.img).loc[ids].to_numpy()] = part
        tests.append(unit_length(np.load(fold_folder / "test_embeddings.npy")))
    return train, np.mean(tests, 0)


def unit_length(embeddings: np.ndarray) -> np.ndarray:
    """Each row scaled to length 1 (float32): how embeddings enter a cosine neighbour space."""
    embeddings = embeddings.astype(np.float32)
    return embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
