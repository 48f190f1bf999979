"""submission stage: format, validate and write the submission CSV; score it locally where labels exist.

Reads the ensemble's test probabilities, the sample submission and, for the
stand-in, ``solution.csv`` (hidden labels with Kaggle's Public/Private split).
Writes ``submissions/<competition>-<content hash>.csv`` (named by what it holds,
so every distinct prediction keeps its own file) and a copy at
``submissions/latest.csv``, only after validation passes; an invalid frame is
an error, never a file. Logs the local leaderboard (public, private) beside
the CV log loss in ``metrics/submission/``.

    python -m pipeline.stages.submission
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import pandas as pd
from dvclive import Live

from pipeline.atomic import atomic_file
from pipeline.compute.cores import stage_command
from pipeline.config import load_params
from pipeline.data.competitions import CompetitionSpec, competition_of
from pipeline.data.predictions import read_table
from pipeline.data.solution import read_solution
from pipeline.ensemble.submission_format import (FLOAT_FORMAT, file_sha256, read_submission, score, to_submission,
                                       validate_submission)
from pipeline.errors import PipelineError
from pipeline.paths import SUBMISSIONS, ensemble_dir, metrics_dir, raw_dir

log = logging.getLogger(__name__)


def content_hash(table: pd.DataFrame) -> str:
    """The first 8 hex digits of the SHA-256 of the CSV as written: the same predictions, the same name."""
    return hashlib.sha256(table.to_csv(index=False, float_format=FLOAT_FORMAT).encode()).hexdigest()[:8]


def write_submission(table: pd.DataFrame, sample: pd.DataFrame, spec: CompetitionSpec, target: Path) -> None:
    """Validate, write ``target`` and ``latest.csv``, validate again as Kaggle will read it."""
    validate_submission(table, sample, spec, str(target))
    with atomic_file(target) as tmp:
        table.to_csv(tmp, index=False, float_format=FLOAT_FORMAT)
        validate_submission(read_submission(tmp, spec.submission_id), sample, spec, str(target))
    with atomic_file(SUBMISSIONS / "latest.csv") as tmp:
        shutil.copyfile(target, tmp)
    log.info("wrote %s (%d rows) and %s", target, len(table), SUBMISSIONS / "latest.csv")


def main_for() -> None:
    params = load_params()
    spec = competition_of(params)
    raw, sampled = raw_dir(spec.slug), params.data.sample < 1
    sample = read_submission(raw / spec.sample_submission, spec.submission_id)
    test = read_table(ensemble_dir(spec.slug) / "test.csv", spec.classes)
    ids = [i for i in sample[spec.submission_id] if i in test.index] if sampled else list(sample[spec.submission_id])
    missing = sorted(set(ids) - set(test.index))
    if missing:
        raise PipelineError(f"{ensemble_dir(spec.slug) / 'test.csv'}: no prediction for test image {missing[0]!r}")
    # An ordinal metric's class is cut at the thresholds the ensemble fit out of fold.
    thresholds = json.loads((ensemble_dir(spec.slug) / "blend.json").read_text()).get("thresholds", ())
    table = to_submission(ids, test.loc[ids].to_numpy(), spec, thresholds)
    target = SUBMISSIONS / f"{spec.slug}-{content_hash(table)}.csv"
    key = spec.scorer.key
    cv = json.loads((metrics_dir("ensemble") / "metrics.json").read_text())[f"cv_{key}"]
    with Live(str(metrics_dir("submission")), dvcyaml=False, save_dvc_exp=False, report=None) as live:
        # file and sha256: what `python -m pipeline.submit` checks it uploads (empty: this run wrote no submission)
        live.summary.update({f"cv_{key}": cv, "experiment": os.environ.get("DVC_EXP_NAME", ""), "file": "",
                             "sha256": ""})
        if sampled:  # the fast.ai way: a sample proves the pipeline and the idea, the full run gets submitted
            log.info("data.sample=%g: a sample run (%d of %d test images); CV %s %.4f; no submission written",
                     params.data.sample, len(ids), len(sample), spec.metric, cv)
        elif not len(table):  # own data without a test folder: the CV metrics are the result
            log.info("no test images: CV %s %.4f; no submission written", spec.metric, cv)
        else:
            write_submission(table, sample, spec, target)
            live.summary.update(file=target.name, sha256=file_sha256(target))
        solution_path = raw / spec.solution_csv
        if solution_path.is_file() and len(table):  # hidden labels: a stand-in's, or the user's own hold-out
            solution = read_solution(solution_path, spec)
            scores = score(table, solution, spec)
            live.summary.update(scores)
            # Kaggle's public/private split, or a user's own held-out labels without one: scored as one set
            live.summary["solution_parts"] = "public/private" if "Usage" in solution.columns else "one set"
            if "Usage" not in solution.columns:
                log.info("%s has no Usage column: its labels are scored as one set (public and private both that "
                         "set)", solution_path)
            if f"private_{key}" in scores:
                live.summary["cv_over_private"] = cv / scores[f"private_{key}"]
            log.info("CV %s %.4f; local leaderboard%s: %s", spec.metric, cv,
                     " on the sample's test images" if sampled else "",
                     ", ".join(f"{k.split('_')[0]} {v:.4f}" for k, v in scores.items()))


main = stage_command(main_for)


if __name__ == "__main__":
    main()
