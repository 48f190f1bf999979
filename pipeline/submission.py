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

import numpy as np
import pandas as pd
from dvclive import Live

from pipeline.atomic import atomic_file
from pipeline.competitions import CompetitionSpec, get_spec
from pipeline.config import Params, load_params
from pipeline.errors import PipelineError, cli
from pipeline.metrics import multiclass_log_loss
from pipeline.paths import SUBMISSIONS, ensemble_dir, metrics_dir, raw_dir

log = logging.getLogger(__name__)


def validate_submission(table: pd.DataFrame, sample: pd.DataFrame, spec: CompetitionSpec, where: str) -> None:
    """What Kaggle would refuse, or score badly by accident, refused here with one line."""
    if list(table.columns) != list(spec.submission_columns):
        raise PipelineError(f"{where}: columns {list(table.columns)}; expected {list(spec.submission_columns)}")
    ids = table[spec.id_column]
    if ids.duplicated().any():
        raise PipelineError(f"{where}: image {ids[ids.duplicated()].iloc[0]!r} appears more than once")
    missing = sorted(set(sample[spec.id_column]) - set(ids))
    if missing:
        raise PipelineError(f"{where}: {len(missing)} test image(s) missing, e.g. {missing[0]!r}")
    extra = sorted(set(ids) - set(sample[spec.id_column]))
    if extra:
        raise PipelineError(f"{where}: {len(extra)} image(s) not in the sample submission, e.g. {extra[0]!r}")
    values = table[list(spec.classes)].to_numpy(dtype=float)
    if not np.isfinite(values).all():
        raise PipelineError(f"{where}: non-finite probabilities in row {int(np.nonzero(~np.isfinite(values))[0][0])}")
    if (values < 0).any() or (values > 1).any():
        raise PipelineError(f"{where}: probabilities outside [0, 1]")
    sums = values.sum(1)
    if not np.allclose(sums, 1.0, atol=1e-4):
        raise PipelineError(f"{where}: row {int(np.argmax(np.abs(sums - 1)))} sums to {sums.max():.4f}, not 1")


def score(table: pd.DataFrame, solution: pd.DataFrame, spec: CompetitionSpec) -> dict[str, float]:
    """Log loss on Kaggle's public and private parts of the test set, as the leaderboard would show it."""
    merged = solution.merge(table, on=spec.id_column, validate="one_to_one")
    labels = merged[spec.label_column].map({c: i for i, c in enumerate(spec.classes)}).to_numpy()
    proba = merged[list(spec.classes)].to_numpy(dtype=float)
    scores = {"leaderboard_log_loss": multiclass_log_loss(labels, proba)}
    for usage in ("Public", "Private"):
        part = (merged.Usage == usage).to_numpy()
        scores[f"{usage.lower()}_log_loss"] = multiclass_log_loss(labels[part], proba[part])
    return scores


def params_hash(params: Params) -> str:
    return hashlib.sha256(json.dumps(params.model_dump(), sort_keys=True).encode()).hexdigest()[:8]


def main_for() -> None:
    params = load_params()
    spec = get_spec(params.competition)
    raw = raw_dir(spec.slug)
    sample = pd.read_csv(raw / spec.sample_submission)
    test = pd.read_csv(ensemble_dir(spec.slug) / "test.csv").rename(columns={"img": spec.id_column})
    table = sample[[spec.id_column]].merge(test, on=spec.id_column, how="left")
    target = SUBMISSIONS / f"{spec.slug}-{params_hash(params)}.csv"
    validate_submission(table, sample, spec, str(target))
    with atomic_file(target) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6f")
        validate_submission(pd.read_csv(tmp), sample, spec, str(target))  # what Kaggle will read back
    with atomic_file(SUBMISSIONS / "latest.csv") as tmp:
        shutil.copyfile(target, tmp)
    log.info("wrote %s (%d rows) and %s", target, len(table), SUBMISSIONS / "latest.csv")

    cv = json.loads((metrics_dir("ensemble") / "metrics.json").read_text())["cv_log_loss"]
    with Live(str(metrics_dir("submission")), dvcyaml=False, save_dvc_exp=False, report=None) as live:
        live.summary.update(cv_log_loss=cv, file=target.name, experiment=os.environ.get("DVC_EXP_NAME", ""))
        solution_path = raw / spec.solution_csv
        if solution_path.is_file():  # only the stand-in knows its test labels
            scores = score(table, pd.read_csv(solution_path), spec)
            live.summary.update(scores, cv_over_private=cv / scores["private_log_loss"])
            log.info("CV log loss %.4f; local leaderboard: public %.4f, private %.4f", cv,
                     scores["public_log_loss"], scores["private_log_loss"])


main = cli(main_for)


if __name__ == "__main__":
    main()
