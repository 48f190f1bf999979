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
(pipeline/leaderboard.py) and saves it with the experiment that made the file (``dvc exp save -f -n
<experiment>``): `dvc exp show` then lists ``lb_public`` beside ``cv_log_loss``.

    python -m pipeline.submit [--file submissions/latest.csv] [--message "..."] [--wait 600]
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

from pipeline.competitions import load_spec
from pipeline.config import load_params
from pipeline.errors import PipelineError, cli
from pipeline.kaggle_io import submit_file, submits_notebooks_only
from pipeline.leaderboard import RECORD, record, wait_for_score
from pipeline.paths import SUBMISSIONS, metrics_dir, raw_dir
from pipeline.submission_format import file_sha256, read_submission, recorded_cv, validate_submission

log = logging.getLogger(__name__)
SUBMISSION_METRICS = metrics_dir("submission") / "metrics.json"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _submission_metrics() -> dict:
    return json.loads(SUBMISSION_METRICS.read_text()) if SUBMISSION_METRICS.is_file() else {}


def default_message(made: dict) -> str:
    """``<commit>[-dirty] [<experiment>] [cv=<CV>] <file>`` for the submission the stage recorded in ``made``."""
    commit = _git("rev-parse", "--short", "HEAD") or "no-commit"
    if _git("status", "--porcelain", "--untracked-files=no"):
        commit += "-dirty"
    # The submission stage recorded the experiment it ran in (DVC_EXP_NAME, set by `dvc exp run`).
    experiment, cv = made.get("experiment", ""), recorded_cv(made)
    parts = [commit, experiment, f"cv={cv:.4f}" if cv is not None else "", made.get("file", "")]
    return " ".join(p for p in parts if p)


def made_by_this_run(path: Path, made: dict) -> bool:
    """Whether ``path`` holds exactly the submission the workspace's last run wrote (``made``: its metrics)."""
    return bool(made.get("sha256")) and file_sha256(path) == made["sha256"]


def not_made_here(path: Path, made: dict) -> PipelineError:
    what = (f"the run recorded {made['file']} (sha256 {made['sha256'][:12]})" if made.get("sha256")
            else "the run recorded no submission file (a data.sample run, or one that wrote none)")
    return PipelineError(f"{path}: not the file this workspace's run made ({SUBMISSION_METRICS}: {what}; this file: "
                         f"sha256 {file_sha256(path)[:12]}): run `dvc repro` (after `dvc exp apply`, too), or give "
                         f"--message to submit it as a file of no experiment")


@cli(cores=False)  # it waits on Kaggle: no share of the cores
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
    spec = load_spec(params.competition)
    if not spec.kaggle:
        raise PipelineError(f"params.yaml: competition: {spec.slug} is not a Kaggle competition, there is nothing to "
                            f"submit to; its local scores are in {SUBMISSION_METRICS}")
    if not args.file.is_file():
        raise PipelineError(f"{args.file}: not found; run `dvc repro` first")
    validate_submission(read_submission(args.file, spec.submission_id),
                        read_submission(raw_dir(spec.slug) / spec.sample_submission, spec.submission_id), spec,
                        str(args.file))
    made = _submission_metrics()
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


def save_experiment(name: str) -> None:
    """Save the workspace (the experiment's results plus its score) as experiment ``name`` again."""
    # Only the submission stage's outputs are committed again: `dvc exp run` cached the others already.
    saved = subprocess.run([sys.executable, "-m", "dvc", "exp", "save", "--force", "-n", name,
                            "--include-untracked", str(RECORD), "submission"], capture_output=True, text=True)
    if saved.returncode == 0:
        log.info("saved with experiment %s: `dvc exp show` lists lb_public beside the CV", name)
    else:  # the score is recorded in the workspace either way
        detail = (saved.stderr.strip().splitlines() or ["?"])[-1]
        log.warning("warning: could not save the score with experiment %s (%s); `dvc exp save -f -n %s` does",
                    name, detail, name)


if __name__ == "__main__":
    main()
