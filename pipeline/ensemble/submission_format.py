"""The competition's submission format: probabilities to and from its columns, what Kaggle would refuse, and
the local leaderboard's score against hidden labels. The submission stage writes with it; ``python -m
pipeline.submit`` checks a file with it before uploading.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from pipeline.data.competitions import CompetitionSpec
from pipeline.data.metrics import competition_metric
from pipeline.data.solution import LABEL
from pipeline.errors import PipelineError

FLOAT_FORMAT = "%.6f"  # how a submission's probabilities are written


def read_submission(path, id_column: str) -> pd.DataFrame:
    """A submission-shaped CSV (ours, the sample submission, solution.csv), the ids as text (Dogs vs. Cats ids are
    numbers, and must not become floats)."""
    return pd.read_csv(path, dtype={id_column: str})


def recorded_cv(made: dict) -> float | None:
    """The CV a run's submission metrics recorded (``cv_log_loss``, ``cv_roc_auc``, ...: the metric's key)."""
    return next((value for key, value in made.items() if key.startswith("cv_") and key != "cv_over_private"), None)


def file_sha256(path) -> str:
    """The file's SHA-256 (hex): the submission stage records it, the submit command checks it before uploading."""
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def to_submission(ids, proba: np.ndarray, spec: CompetitionSpec, thresholds=()) -> pd.DataFrame:
    """Per-class probabilities -> the competition's columns: a column per class, the positive class's probability,
    or the class the metric decides on (the most probable; an ordinal metric's cut at the ensemble's thresholds)."""
    table = pd.DataFrame({spec.submission_id: list(ids)})
    if spec.submission_values == "positive":
        table[spec.submission_column] = proba[:, spec.classes.index(spec.positive_class)]
    elif spec.submission_values == "class":
        table[spec.submission_column] = np.array(spec.classes)[spec.scorer.decide(proba, thresholds)]
    else:  # every class column at once (Dog Breed Identification's 120 one by one fragment the frame)
        table = pd.concat([table, pd.DataFrame(proba, columns=list(spec.classes))], axis=1)
    return table


def from_submission(table: pd.DataFrame, spec: CompetitionSpec) -> np.ndarray:
    """The competition's columns -> per-class probabilities [n, classes] (a class: its one-hot row)."""
    if spec.submission_values == "positive":
        positive = table[spec.submission_column].to_numpy(dtype=float)
        both = np.stack([1 - positive, positive], 1)
        return both if spec.classes.index(spec.positive_class) == 1 else both[:, ::-1]
    if spec.submission_values == "class":
        return np.eye(len(spec.classes))[spec.class_indices(table[spec.submission_column].astype(str))]
    return table[list(spec.classes)].to_numpy(dtype=float)


def validate_submission(table: pd.DataFrame, sample: pd.DataFrame, spec: CompetitionSpec, where: str) -> None:
    """What Kaggle would refuse, or score badly by accident, refused here with one line."""
    if list(table.columns) != list(spec.submission_columns):
        raise PipelineError(f"{where}: columns {list(table.columns)}; expected {list(spec.submission_columns)}")
    ids = table[spec.submission_id].astype(str)
    if ids.duplicated().any():
        raise PipelineError(f"{where}: image {ids[ids.duplicated()].iloc[0]!r} appears more than once")
    expected = set(sample[spec.submission_id].astype(str))
    missing = sorted(expected - set(ids))
    if missing:
        raise PipelineError(f"{where}: {len(missing)} test image(s) missing, e.g. {missing[0]!r}")
    extra = sorted(set(ids) - expected)
    if extra:
        raise PipelineError(f"{where}: {len(extra)} image(s) not in the sample submission, e.g. {extra[0]!r}")
    if spec.submission_values == "class":
        given = table[spec.submission_column].astype(str)
        unknown = ~given.isin(spec.classes)
        if unknown.any():
            raise PipelineError(f"{where}: row {int(np.argmax(unknown.to_numpy()))}: {spec.submission_column} "
                                f"{given[unknown].iloc[0]!r} is not a class ({', '.join(spec.classes)})")
        return
    values = table[list(spec.submission_columns[1:])].to_numpy(dtype=float)
    if not np.isfinite(values).all():
        raise PipelineError(f"{where}: non-finite probabilities in row {int(np.nonzero(~np.isfinite(values))[0][0])}")
    if (values < 0).any() or (values > 1).any():
        raise PipelineError(f"{where}: probabilities outside [0, 1]")
    sums = values.sum(1)
    if spec.submission_values == "probabilities" and not np.allclose(sums, 1.0, atol=1e-4):
        raise PipelineError(f"{where}: row {int(np.argmax(np.abs(sums - 1)))} sums to {sums.max():.4f}, not 1")


def score(table: pd.DataFrame, solution: pd.DataFrame, spec: CompetitionSpec) -> dict[str, float]:
    """The competition's metric on Kaggle's public and private parts of the test set, as the leaderboard shows it
    (``leaderboard_<key>``, ``public_<key>``, ``private_<key>``; key: log_loss, roc_auc, kappa, ...). ``solution``
    is as pipeline/data/solution.py reads it (id, class names, ``Usage``); one without a ``Usage`` column (a user's own held-out labels: an id and a label) is one set, public and private
    both."""
    if "Usage" not in solution.columns:
        solution = solution.assign(Usage="Public")
        whole = score(table, solution, spec)
        key = spec.scorer.key
        return {**whole, f"private_{key}": whole[f"public_{key}"]}
    truth = solution[[spec.submission_id, LABEL, "Usage"]].rename(columns={LABEL: "truth"})
    merged = truth.astype({spec.submission_id: str, "truth": str}).merge(
        table.astype({spec.submission_id: str}), on=spec.submission_id, validate="one_to_one")
    labels, proba = spec.class_indices(merged.truth), from_submission(merged, spec)
    key = spec.scorer.key
    # A submitted class is already decided: its one-hot row decides the same class again (its grade is the class).
    scores = {f"leaderboard_{key}": competition_metric(spec, labels, proba)}
    for usage in ("Public", "Private"):
        part = (merged.Usage == usage).to_numpy()
        if part.any():  # a sample run's few test images may all fall on one side
            scores[f"{usage.lower()}_{key}"] = competition_metric(spec, labels[part], proba[part])
    return scores
