"""The leaderboard's answer back into the experiment table: Kaggle's scores beside the CV that predicted them.

``python -m pipeline.submit`` uploads, then waits here for Kaggle to score the file and records the score in
``metrics/leaderboard/metrics.json`` (``lb_public``, ``lb_private`` once the competition has closed, date, file,
message), a metrics file of dvc.yaml: `dvc exp show` shows it beside ``cv_log_loss``, and the submit command saves
it with the experiment that made the file (``dvc exp save``).

``python -m pipeline.leaderboard`` pulls every submission of the competition, reads each one's CV from the
message the submit command wrote (``<commit> <experiment> cv=<CV> <file>``), and writes
``metrics/leaderboard/submissions.json``: the CV-against-leaderboard plot of dvc.yaml (`dvc plots show`). A
pending record in metrics.json (a wait that timed out) gets its score too.

    python -m pipeline.leaderboard
"""
from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path
from typing import Callable, TypeVar

from pipeline.atomic import atomic_file
from pipeline.competitions import load_spec
from pipeline.config import load_params
from pipeline.errors import PipelineError, cli
from pipeline.kaggle_io import Submission, get_submission, list_submissions
from pipeline.paths import metrics_dir
from pipeline.progress import progress

log = logging.getLogger(__name__)
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


@cli(cores=False)  # it waits on Kaggle: no share of the cores
def main() -> None:
    spec = load_spec(load_params().competition)
    submissions = list_submissions(spec.slug)
    rows = history(submissions, f"{spec.metric} ({spec.scorer.direction})")
    HISTORY.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(HISTORY) as tmp:
        tmp.write_text(json.dumps(rows, indent=2) + "\n")
    if RECORD.is_file():  # a wait that timed out: the score may be there now
        pending = json.loads(RECORD.read_text())
        scored = [s for s in submissions if s.ref == pending.get("submission") and s.status == "complete"]
        if pending.get("status") != "complete" and scored:
            record(scored[0], pending["message"], pending["file"], scored[0].ref)
            log.info("%s: scored %s", RECORD, scored[0].public)
    for row in rows:
        log.info("%s %-8s %-12s cv %.4f  public %.4f%s", row["date"][:10], row["commit"], row["experiment"] or "-",
                 row["cv"], row["lb_public"],
                 f"  private {row['lb_private']:.4f}" if "lb_private" in row else "")
    log.info("%d of %d submissions carry a CV; wrote %s (`dvc plots show`)", len(rows), len(submissions), HISTORY)


if __name__ == "__main__":
    main()
