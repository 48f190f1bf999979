"""Scores from Kaggle's leaderboard, recorded where `dvc exp show` finds them: waiting on a submission's score,
metrics/leaderboard/metrics.json (the latest: lb_public and lb_private beside the CV) and submissions.json (every
submission of the competition, matched to its commit and experiment by its message). Used by `python -m
pipeline.submit`, `python -m pipeline.kernel push` and `python -m pipeline.leaderboard`.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Callable, TypeVar

from pipeline.atomic import atomic_file
from pipeline.errors import PipelineError
from pipeline.kaggle.client import Submission, get_submission
from pipeline.paths import metrics_dir
from pipeline.progress import progress

RECORD = metrics_dir("leaderboard") / "metrics.json"
T = TypeVar("T")
HISTORY = metrics_dir("leaderboard") / "submissions.json"
# What the submit command writes: "<commit> [<experiment>] [cv=<CV>] <file>" (no experiment outside `dvc exp run`).
MESSAGE = re.compile(r"^(?P<commit>\S+)(?: (?!cv=)(?P<experiment>\S+))?(?: cv=(?P<cv>[0-9.]+))?(?: (?P<file>\S+))?$")


def wait_until(look: Callable[[], T | None], desc: str, poll: float, timeout: float,
               too_late: Callable[[], str]) -> T:
    """``look()`` every ``poll`` seconds, with a progress line, until it returns something (it raises when what it
    waits for failed); after ``timeout`` seconds, a one-line error saying ``too_late()``."""
    started = time.monotonic()
    with progress(total=None, desc=desc, unit="check") as bar:
        while (found := look()) is None:
            if time.monotonic() - started + poll > timeout:
                raise PipelineError(too_late())
            bar.update(1)
            time.sleep(poll)
    return found


def wait_for_score(competition: str, ref: int, timeout: float, poll: float) -> Submission:
    """Submission ``ref`` (the reference its create call returned), once Kaggle has scored it; a one-line error when
    Kaggle reports an error or ``timeout`` seconds pass."""
    seen: list[Submission] = []

    def scored() -> Submission | None:
        seen[:] = [get_submission(competition, ref)]
        if seen[0].status == "error":
            raise PipelineError(f"Kaggle could not score {seen[0].file or f'submission {ref}'}: "
                                f"{seen[0].error or 'scoring error'}")
        return seen[0] if seen[0].status == "complete" else None

    return wait_until(scored, "waiting for Kaggle's score", poll, timeout, lambda: (
        f"Kaggle has not scored {seen[0].file or f'submission {ref}'} after {timeout:.0f} s (submission {ref}); "
        f"`python -m pipeline.leaderboard` records the score once it has"))


def record(submission: Submission | None, message: str, file: str, ref: int, path: Path = RECORD) -> dict:
    """Write metrics/leaderboard/metrics.json for this workspace's submission ``ref`` (pending when ``submission``
    is None, or not yet scored)."""
    row = {"message": message, "file": file, "submission": ref,
           "status": submission.status if submission else "pending"}
    if submission is not None:
        row.update(date=submission.date)
        row.update({key: value for key, value in (("lb_public", submission.public), ("lb_private", submission.private))
                    if value is not None})
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(row, indent=2) + "\n")
    return row


def history(submissions: list[Submission], metric: str = "") -> list[dict]:
    """A row per scored submission whose message carries a CV (the submit command's), oldest first; ``metric``
    (its name and direction) goes in every row, where the plot's tooltip shows it."""
    rows = []
    for sub in reversed(submissions):
        match = MESSAGE.match(sub.message.strip())
        if sub.public is None or not match or not match["cv"]:
            continue
        rows.append({"date": sub.date, "commit": match["commit"], "experiment": match["experiment"] or "",
                     "cv": float(match["cv"]), "lb_public": sub.public, "metric": metric,
                     **({"lb_private": sub.private} if sub.private is not None else {}), "file": sub.file})
    return rows
