"""submission stage: format, validate and write the submission CSV; score it locally where labels exist.

Reads the ensemble's test probabilities, the sample submission and, for the
stand-in, ``solution.csv`` (hidden labels with Kaggle's Public/Private split).
Writes ``submissions/<competition>-<params hash>.csv`` and a copy at
``submissions/latest.csv``, only after validation passes; an invalid frame is
an error, never a file. Logs the local leaderboard (public, private) beside
the CV log loss in ``metrics/submission/``.

    python -m pipeline.submission
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from dvclive import Live

from pipeline.atomic import atomic_file
from pipeline.competitions import CompetitionSpec, load_spec
from pipeline.config import Params, load_params
from pipeline.errors import PipelineError, cli
from pipeline.metrics import competition_metric
from pipeline.predictions import read_table
from pipeline.paths import SUBMISSIONS, ensemble_dir, metrics_dir, raw_dir

log = logging.getLogger(__name__)


def read_submission(path, id_column: str) -> pd.DataFrame:
    """A submission-shaped CSV (ours, the sample submission, solution.csv), the ids as text (Dogs vs. Cats ids are
    numbers, and must not become floats)."""
    return pd.read_csv(path, dtype={id_column: str})


def to_submission(ids, proba: np.ndarray, spec: CompetitionSpec) -> pd.DataFrame:
    """Per-class probabilities -> the competition's columns (binary: the positive class's probability)."""
    table = pd.DataFrame({spec.submission_id: list(ids)})
    if spec.positive_class:
        table["label"] = proba[:, spec.classes.index(spec.positive_class)]
    else:
        table[list(spec.classes)] = proba
    return table


def from_submission(table: pd.DataFrame, spec: CompetitionSpec) -> np.ndarray:
    """The competition's columns -> per-class probabilities [n, classes]."""
    if spec.positive_class:
        positive = table["label"].to_numpy(dtype=float)
        both = np.stack([1 - positive, positive], 1)
        return both if spec.classes.index(spec.positive_class) == 1 else both[:, ::-1]
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
    values = table[list(spec.submission_columns[1:])].to_numpy(dtype=float)
    if not np.isfinite(values).all():
        raise PipelineError(f"{where}: non-finite probabilities in row {int(np.nonzero(~np.isfinite(values))[0][0])}")
    if (values < 0).any() or (values > 1).any():
        raise PipelineError(f"{where}: probabilities outside [0, 1]")
    sums = values.sum(1)
    if not spec.positive_class and not np.allclose(sums, 1.0, atol=1e-4):
        raise PipelineError(f"{where}: row {int(np.argmax(np.abs(sums - 1)))} sums to {sums.max():.4f}, not 1")


def score(table: pd.DataFrame, solution: pd.DataFrame, spec: CompetitionSpec) -> dict[str, float]:
    """The competition's metric on Kaggle's public and private parts of the test set, as the leaderboard shows it."""
    truth = solution[[spec.submission_id, spec.label_column, "Usage"]].rename(columns={spec.label_column: "truth"})
    merged = truth.astype({spec.submission_id: str}).merge(table.astype({spec.submission_id: str}),
                                                           on=spec.submission_id, validate="one_to_one")
    labels, proba = spec.class_indices(merged.truth), from_submission(merged, spec)
    scores = {"leaderboard_log_loss": competition_metric(spec, labels, proba)}
    for usage in ("Public", "Private"):
        part = (merged.Usage == usage).to_numpy()
        if part.any():  # a sample run's few test images may all fall on one side
            scores[f"{usage.lower()}_log_loss"] = competition_metric(spec, labels[part], proba[part])
    return scores


def params_hash(params: Params) -> str:
    return hashlib.sha256(json.dumps(params.model_dump(), sort_keys=True).encode()).hexdigest()[:8]


def write_submission(table: pd.DataFrame, sample: pd.DataFrame, spec: CompetitionSpec, target: Path) -> None:
    """Validate, write ``target`` and ``latest.csv``, validate again as Kaggle will read it."""
    validate_submission(table, sample, spec, str(target))
    with atomic_file(target) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6f")
        validate_submission(read_submission(tmp, spec.submission_id), sample, spec, str(target))
    with atomic_file(SUBMISSIONS / "latest.csv") as tmp:
        shutil.copyfile(target, tmp)
    log.info("wrote %s (%d rows) and %s", target, len(table), SUBMISSIONS / "latest.csv")


def main_for() -> None:
    params = load_params()
    spec = load_spec(params.competition)
    raw, sampled = raw_dir(spec.slug), params.data.sample < 1
    sample = read_submission(raw / spec.sample_submission, spec.submission_id)
    test = read_table(ensemble_dir(spec.slug) / "test.csv", spec.classes)
    ids = [i for i in sample[spec.submission_id] if i in test.index] if sampled else list(sample[spec.submission_id])
    missing = sorted(set(ids) - set(test.index))
    if missing:
        raise PipelineError(f"{ensemble_dir(spec.slug) / 'test.csv'}: no prediction for test image {missing[0]!r}")
    table = to_submission(ids, test.loc[ids].to_numpy(), spec)
    target = SUBMISSIONS / f"{spec.slug}-{params_hash(params)}.csv"
    cv = json.loads((metrics_dir("ensemble") / "metrics.json").read_text())["cv_log_loss"]
    with Live(str(metrics_dir("submission")), dvcyaml=False, save_dvc_exp=False, report=None) as live:
        live.summary.update(cv_log_loss=cv, experiment=os.environ.get("DVC_EXP_NAME", ""), file="")
        if sampled:  # the fast.ai way: a sample proves the pipeline and the idea, the full run gets submitted
            log.info("data.sample=%g: a sample run (%d of %d test images); CV log loss %.4f; no submission written",
                     params.data.sample, len(ids), len(sample), cv)
        elif not len(table):  # own data without a test folder: the CV metrics are the result
            log.info("no test images: CV log loss %.4f; no submission written", cv)
        else:
            write_submission(table, sample, spec, target)
            live.summary["file"] = target.name
        solution_path = raw / spec.solution_csv
        if solution_path.is_file() and len(table):  # hidden labels: a stand-in's, or the user's own hold-out
            scores = score(table, read_submission(solution_path, spec.submission_id), spec)
            live.summary.update(scores)
            if "private_log_loss" in scores:
                live.summary["cv_over_private"] = cv / scores["private_log_loss"]
            log.info("CV log loss %.4f; local leaderboard%s: %s", cv, " on the sample's test images" if sampled else "",
                     ", ".join(f"{k.split('_')[0]} {v:.4f}" for k, v in scores.items()))


main = cli(main_for)


if __name__ == "__main__":
    main()
