"""Submit the submission CSV the experiment made to Kaggle with a message that traces it to a commit, the
experiment and its CV, then bring the leaderboard's score back into that experiment.

Same as ``kaggle competitions submit -c <competition> -f <file> -m <message>``, with the message filled in:
``<commit> <experiment> cv=<CV log loss> <file>``, where ``<file>`` is the content-named file the submission stage
wrote. What it refuses, each before any upload, in one line:

- a file that is not the one ``metrics/submission/metrics.json`` describes (its SHA-256 differs: an older file left
  by a ``data.sample`` run or after ``dvc exp apply``, which would go up under another experiment's CV); with
  ``--message`` such a file is submitted as a file of no experiment, and its score is saved with none;
- a file Kaggle would refuse (checked against the sample submission);
- a competition that is not on Kaggle (own data), before any network call;
- a competition that accepts only notebooks (a code competition), with the command to use instead.

Then it waits (``--wait`` seconds, 0: not at all) on the reference Kaggle's create call returned (never on the
message, which a resubmission repeats), records the score in metrics/leaderboard/metrics.json
(pipeline/kaggle/scores.py) and saves it with the experiment that made the file (``dvc exp save -f -n
<experiment>``): `dvc exp show` then lists ``lb_public`` beside ``cv_log_loss``.

    python -m pipeline.submit [--file submissions/latest.csv] [--message "..."] [--wait 600]
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.config import load_params
from pipeline.data.competitions import competition_of
from pipeline.ensemble.submission_format import read_submission, validate_submission
from pipeline.errors import PipelineError, cli
from pipeline.kaggle.client import submit_file, submits_notebooks_only
from pipeline.kaggle.scores import RECORD, record, wait_for_score
from pipeline.kaggle.submissions import (SUBMISSION_METRICS, default_message, made_by_this_run, not_made_here,
                                         save_experiment, submission_metrics)
from pipeline.paths import SUBMISSIONS, raw_dir


log = logging.getLogger(__name__)


@cli  # it waits on Kaggle: no share of the cores
def main() -> None:
    parser = argparse.ArgumentParser(description="Submit a CSV to the competition in params.yaml")
    parser.add_argument("--file", type=Path, default=SUBMISSIONS / "latest.csv")
    parser.add_argument("--message", "-m", default=None,
                        help="the submission's description; needed for a file this workspace's run did not make")
    parser.add_argument("--wait", type=float, default=600,
                        help="seconds to wait for Kaggle's score (0: submit and return)")
    parser.add_argument("--poll", type=float, default=15, help="seconds between two looks at the submission")
    args = parser.parse_args()
    params = load_params()
    spec = competition_of(params)
    if not spec.kaggle:
        raise PipelineError(f"params.yaml: competition: {spec.slug} is not a Kaggle competition, there is nothing to "
                            f"submit to; its local scores are in {SUBMISSION_METRICS}")
    if not args.file.is_file():
        raise PipelineError(f"{args.file}: not found; run `dvc repro` first")
    validate_submission(read_submission(args.file, spec.submission_id),
                        read_submission(raw_dir(spec.slug) / spec.sample_submission, spec.submission_id), spec,
                        str(args.file))
    made = submission_metrics()
    ours = made_by_this_run(args.file, made)
    if not ours and args.message is None:
        raise not_made_here(args.file, made)
    if submits_notebooks_only(spec.slug):
        raise PipelineError(f"{spec.slug} accepts only notebooks, not a CSV upload: `python -m pipeline.kernel "
                            f"push` sends the run as the notebook Kaggle runs, and submits its output")
    message = args.message or default_message(made)
    submitted = submit_file(spec.slug, args.file, message)
    log.info("submitted %s to %s as submission %d: %s (message: %s)", args.file, spec.slug, submitted.ref,
             submitted.message or "accepted", message)
    if not ours:  # a file of no experiment: its score is shown, and saved with none
        if args.wait > 0:
            scored = wait_for_score(spec.slug, submitted.ref, args.wait, args.poll)
            log.info("public leaderboard %s (submission %d; not recorded: %s is no experiment's file)",
                     scored.public, scored.ref, args.file)
        return
    record(None, message, made["file"], submitted.ref)  # pending: `python -m pipeline.leaderboard` scores it later
    if args.wait <= 0:
        return
    scored = record(wait_for_score(spec.slug, submitted.ref, args.wait, args.poll), message, made["file"],
                    submitted.ref)
    log.info("public leaderboard %s%s; recorded in %s", scored.get("lb_public"),
             f", private {scored['lb_private']}" if "lb_private" in scored else "", RECORD)
    if made.get("experiment"):
        save_experiment(made["experiment"])


if __name__ == "__main__":
    main()
