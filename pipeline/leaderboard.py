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

from pipeline.atomic import atomic_file
from pipeline.config import load_params
from pipeline.data.competitions import competition_of
from pipeline.errors import cli
from pipeline.kaggle.client import list_submissions
from pipeline.kaggle.scores import HISTORY, RECORD, history, record
log = logging.getLogger(__name__)


@cli  # it waits on Kaggle: no share of the cores
def main() -> None:
    spec = competition_of(load_params())
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
