"""A sweep through Slurm against the same sweep through `dvc queue`, a fold killed with scancel, and the sweep sent
again: on a live single-node Slurm started here (tests/slurm_cluster.py; root, Debian's slurm-wlm and munge).

Prints, for the tiny stand-in with two folds: each experiment's CV through Slurm (one thread a task:
``--cpus-per-task 1``) and through ``dvc queue start -j 2`` with ``OMP_NUM_THREADS=1`` (the same thread count), with
each one's wall time; then a third sweep whose fold task is cancelled while it trains (its state, whether anything
of it reached the results), and the same sweep sent again (which tasks trained, which were restored).

    python bench/slurm_sweep.py
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import run  # noqa: E402
from tests.slurm_cluster import missing, single_node_slurm, sweep_repo  # noqa: E402

DVC = [sys.executable, "-m", "dvc"]
SLURM = [sys.executable, "-m", "pipeline.slurm"]


def cv_of(repo: Path, names: set[str]) -> dict[str, float]:
    table = json.loads(run(DVC + ["exp", "show", "--json"], repo).stdout)
    return {e["name"]: e["revs"][0]["data"]["metrics"]["metrics/ensemble/metrics.json"]["data"]["cv_log_loss"]
            for c in table for e in (c.get("experiments") or []) if e.get("name") in names}


def states(repo: Path, run_name: str) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (repo / ".slurm" / run_name / "status").glob("*.json")}


def main() -> None:
    if missing():
        sys.exit(missing())
    with tempfile.TemporaryDirectory() as scratch, single_node_slurm(slots=2):
        repo = sweep_repo(Path(scratch))
        start = time.perf_counter()
        run(SLURM + ["send", "-S", "dropout=0.2,0.5", "--folds", "--wait", "--poll", "1", "--cpus-per-task", "1",
                     "--name", "slurm"], repo)
        slurm_seconds = time.perf_counter() - start
        through_slurm = cv_of(repo, {"slurm-dropout-0.2", "slurm-dropout-0.5"})
        start = time.perf_counter()
        run(DVC + ["exp", "run", "--queue", "-S", "dropout=0.2,0.5"], repo, env={"OMP_NUM_THREADS": "1"})
        run(DVC + ["queue", "start", "-j", "2"], repo, env={"OMP_NUM_THREADS": "1"})
        while any(word in run(DVC + ["queue", "status"], repo).stdout for word in ("Running", "Queued")):
            time.sleep(1)
        queue_seconds = time.perf_counter() - start
        table = json.loads(run(DVC + ["exp", "show", "--json"], repo).stdout)
        queued = {e["revs"][0]["data"]["params"]["params.yaml"]["data"]["dropout"]:
                  e["revs"][0]["data"]["metrics"]["metrics/ensemble/metrics.json"]["data"]["cv_log_loss"]
                  for c in table for e in (c.get("experiments") or []) if not e["name"].startswith("slurm")}
        print(f"through Slurm ({slurm_seconds:.0f} s): " + ", ".join(f"{k} {v:.6f}" for k, v in through_slurm.items()))
        print(f"through dvc queue -j 2 ({queue_seconds:.0f} s): " + ", ".join(f"dropout={k} {v:.6f}"
                                                                         for k, v in sorted(queued.items())))

        # A fold cancelled while it trains, then the same sweep sent again.
        run(SLURM + ["send", "-S", "dropout=0.3", "--folds", "--poll", "1", "--cpus-per-task", "1", "--name",
                     "killed"], repo)
        while not any(s.get("state") == "running" for t, s in states(repo, "killed").items() if t.startswith("fold")):
            time.sleep(0.5)
        time.sleep(8)  # into its training
        victim = next(t for t, s in states(repo, "killed").items() if t.startswith("fold") and s["state"] == "running")
        job = json.loads((repo / ".slurm" / "killed" / "plan.json").read_text())["jobs"]["fold"]
        subprocess.run(["scancel", f"{job}_{victim.removeprefix('fold-')}"], check=True)
        time.sleep(3)
        reported = run(SLURM + ["status", "killed"], repo, check=False).stderr
        print(f"cancelled {victim}: its state {states(repo, 'killed')[victim]['state']!r};",
              [line for line in reported.splitlines() if victim in line])
        while any(line.split()[4] == "R" for line in run(["squeue", "--noheader"], repo).stdout.splitlines()):
            time.sleep(1)  # the other fold ends; the experiment job waits for good (its fold was cancelled)
        subprocess.run(["scancel", "--user", "root"], check=False)
        results = sorted(p.name for p in (repo / ".slurm" / "results").glob("*/*/finetune@*"))
        print("fold results kept after the cancel:", results)
        start = time.perf_counter()
        again = run(SLURM + ["send", "-S", "dropout=0.3", "--folds", "--wait", "--poll", "1", "--cpus-per-task", "1",
                             "--name", "again"], repo, check=False)
        trained = {t: "restored" if "restored" in s else s["state"] for t, s in states(repo, "again").items()}
        print(f"sent again ({time.perf_counter() - start:.0f} s, exit {again.returncode}): {trained}")
        print("CV of the resumed experiment:", cv_of(repo, {"again-dropout-0.3"}))


if __name__ == "__main__":
    main()
