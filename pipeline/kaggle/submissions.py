"""A submission file traced to the run that made it: the message that names its commit, experiment and CV, whether a
file is the one this workspace's run made (by its SHA-256), and the experiment saved again with its score. Used by
`python -m pipeline.submit` and `python -m pipeline.kernel push`.
"""
from __future__ import annotations

import logging
import json
import subprocess
import sys
from pathlib import Path

from pipeline.ensemble.submission_format import file_sha256, recorded_cv
from pipeline.errors import PipelineError
from pipeline.kaggle.scores import RECORD
from pipeline.paths import metrics_dir

SUBMISSION_METRICS = metrics_dir("submission") / "metrics.json"

log = logging.getLogger(__name__)


def git_output(*args: str) -> str:
    """What ``git <args>`` prints, stripped; "" outside a repository or without git."""
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def submission_metrics() -> dict:
    return json.loads(SUBMISSION_METRICS.read_text()) if SUBMISSION_METRICS.is_file() else {}


def default_message(made: dict) -> str:
    """``<commit>[-dirty] [<experiment>] [cv=<CV>] <file>`` for the submission the stage recorded in ``made``."""
    commit = git_output("rev-parse", "--short", "HEAD") or "no-commit"
    if git_output("status", "--porcelain", "--untracked-files=no"):
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
