"""Submit a submission CSV to Kaggle with a message that traces it to a commit, an experiment and its CV.

Same as ``kaggle competitions submit -c <competition> -f <file> -m <message>``,
with the message filled in: ``<commit> <experiment> cv=<CV log loss> <file>``.
Validates the file against the sample submission first.

    python -m pipeline.submit [--file submissions/latest.csv] [--message "..."]
"""
from __future__ import annotations

import argparse
import json
import logging
import subprocess
from pathlib import Path


from pipeline.config import load_params
from pipeline.errors import PipelineError, cli
from pipeline.kaggle_io import submit_file
from pipeline.paths import SUBMISSIONS, metrics_dir, raw_dir
from pipeline.competitions import load_spec
from pipeline.submission_format import read_submission, validate_submission

log = logging.getLogger(__name__)


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def default_message(path: Path) -> str:
    commit = _git("rev-parse", "--short", "HEAD") or "no-commit"
    if _git("status", "--porcelain", "--untracked-files=no"):
        commit += "-dirty"
    metrics_file = metrics_dir("submission") / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    # The submission stage recorded the experiment it ran in (DVC_EXP_NAME, set by `dvc exp run`).
    experiment, cv = metrics.get("experiment", ""), metrics.get("cv_log_loss")
    parts = [commit, experiment, f"cv={cv:.4f}" if cv is not None else "", path.name]
    return " ".join(p for p in parts if p)


@cli
def main() -> None:
    parser = argparse.ArgumentParser(description="Submit a CSV to the competition in params.yaml")
    parser.add_argument("--file", type=Path, default=SUBMISSIONS / "latest.csv")
    parser.add_argument("--message", "-m", default=None)
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


if __name__ == "__main__":
    main()
