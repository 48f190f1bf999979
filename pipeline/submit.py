"""Submit a submission CSV to Kaggle with a message that traces it to a commit, an experiment and its CV, then
bring the leaderboard's score back into the experiment.

Same as ``kaggle competitions submit -c <competition> -f <file> -m <message>``,
with the message filled in: ``<commit> <experiment> cv=<CV log loss> <file>``.
Validates the file against the sample submission first. Then it waits (``--wait`` seconds, 0: not at all) for
Kaggle to score the file, records the score in metrics/leaderboard/metrics.json (pipeline/leaderboard.py) and,
when the file came from an experiment, saves it with that experiment (``dvc exp save -f -n <experiment>``):
`dvc exp show` then lists ``lb_public`` beside ``cv_log_loss``.

    python -m pipeline.submit [--file submissions/latest.csv] [--message "..."] [--wait 600]
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path


from pipeline.config import load_params
from pipeline.errors import PipelineError, cli
from pipeline.kaggle_io import submit_file
from pipeline.leaderboard import RECORD, record, wait_for_score
from pipeline.paths import SUBMISSIONS, metrics_dir, raw_dir
from pipeline.competitions import load_spec
from pipeline.submission_format import read_submission, validate_submission

log = logging.getLogger(__name__)


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _submission_metrics() -> dict:
    metrics_file = metrics_dir("submission") / "metrics.json"
    return json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}


def default_message(path: Path) -> str:
    commit = _git("rev-parse", "--short", "HEAD") or "no-commit"
    if _git("status", "--porcelain", "--untracked-files=no"):
        commit += "-dirty"
    metrics = _submission_metrics()
    # The submission stage recorded the experiment it ran in (DVC_EXP_NAME, set by `dvc exp run`).
    experiment, cv = metrics.get("experiment", ""), metrics.get("cv_log_loss")
    parts = [commit, experiment, f"cv={cv:.4f}" if cv is not None else "", path.name]
    return " ".join(p for p in parts if p)


@cli(cores=False)  # it waits on Kaggle: no share of the cores
def main() -> None:
    parser = argparse.ArgumentParser(description="Submit a CSV to the competition in params.yaml")
    parser.add_argument("--file", type=Path, default=SUBMISSIONS / "latest.csv")
    parser.add_argument("--message", "-m", default=None)
    parser.add_argument("--wait", type=float, default=600,
                        help="seconds to wait for Kaggle's score (0: submit and return)")
    parser.add_argument("--poll", type=float, default=15, help="seconds between two looks at the leaderboard")
    args = parser.parse_args()
    params = load_params()
    spec = load_spec(params.competition)
    if not args.file.is_file():
        raise PipelineError(f"{args.file}: not found; run `dvc repro` first")
    validate_submission(read_submission(args.file, spec.submission_id),
                        read_submission(raw_dir(spec.slug) / spec.sample_submission, spec.submission_id), spec, str(args.file))
    message = args.message or default_message(args.file)
    answer = submit_file(spec.slug, args.file, message)
    log.info("submitted %s to %s: %s (message: %s)", args.file, spec.slug, answer or "accepted", message)
    record(None, message, args.file.name)  # pending: `python -m pipeline.leaderboard` scores it if the wait ends
    if args.wait <= 0:
        return
    scored = record(wait_for_score(spec.slug, message, args.wait, args.poll), message, args.file.name)
    log.info("public leaderboard %s%s; recorded in %s", scored.get("lb_public"),
             f", private {scored['lb_private']}" if "lb_private" in scored else "", RECORD)
    experiment = _submission_metrics().get("experiment", "")
    if experiment:
        save_experiment(experiment)


def save_experiment(name: str) -> None:
    """Save the workspace (the experiment's results plus its score) as experiment ``name`` again."""
    # Only the submission stage's outputs are committed again: `dvc exp run` cached the others already.
    saved = subprocess.run([sys.executable, "-m", "dvc", "exp", "save", "--force", "-n", name,
                            "--include-untracked", str(RECORD), "submission"], capture_output=True, text=True)
    if saved.returncode == 0:
        log.info("saved with experiment %s: `dvc exp show` lists lb_public beside cv_log_loss", name)
    else:  # the score is recorded in the workspace either way
        detail = (saved.stderr.strip().splitlines() or ["?"])[-1]
        log.warning("warning: could not save the score with experiment %s (%s); `dvc exp save -f -n %s` does",
                    name, detail, name)


if __name__ == "__main__":
    main()
