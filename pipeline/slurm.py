"""python -m pipeline.slurm: a sweep's experiments, or each of their folds, as Slurm jobs; results home through the
git remote and the DVC remote.

DVC has no executor for Slurm (treeverse/dvc#7419); the pattern its users settled on is one fresh clone per job,
and that is what every task here does: clone the git remote at the submitted commit, ``dvc repro`` or ``dvc exp
run`` with ``--pull --allow-missing`` (outputs and run-cache entries that the remote holds are restored, not
computed again), then ``dvc push --run-cache`` (and ``dvc exp push`` for an experiment). ``send`` submits:

1. ``prepare``: one job, the stages every experiment shares (download, sample, frames, features, folds) at the
   commit's params, pushed: the frame cache and the features are computed once;
2. with ``--folds``, ``fold``: a job array, one task per (experiment, model, fold): ``dvc repro finetune@<m>-<k>``
   with the experiment's ``-S`` overrides applied to params.yaml, after ``prepare`` (``--dependency=afterok``);
3. ``experiment``: one job per experiment, after its folds (or after ``prepare``): ``dvc exp run -n <name> -S ...``
   (its folds come back from the run-cache), then ``dvc exp push``.

Every task writes its state to ``.slurm/<run>/status/`` and its log to ``.slurm/<run>/logs/`` (a folder of the
submitting workspace: on a cluster it is on the shared file system the nodes write to). ``status`` reads them with
``squeue``: a task that failed is named with its exit status and log, and a job Slurm will never start because a
job it depends on failed (which ``sbatch --wait`` counts as a success) is named too, and cancelled. ``collect``
pulls every finished experiment (``dvc exp pull``); ``dvc exp show`` then lists them with their CV. Sending the
same sweep again resumes from what the remotes hold: a fold whose run the run-cache has is restored, not trained.

    python -m pipeline.slurm send -S 'dropout=0.2,0.5' [--folds] [--cpus-per-task 4] [--gres gpu:1]
        [--time 4:00:00] [--partition gpu] [--git-remote origin] [--dvc-remote NAME_OR_URL] [--wait]
    python -m pipeline.slurm status [RUN]
    python -m pipeline.slurm collect [RUN]

The threads and DataLoader workers of each stage follow the task's allocation (``SLURM_CPUS_PER_TASK``,
pipeline/compute/machine.py). docs/slurm.md has the same flow on a real cluster.
"""
from __future__ import annotations

import argparse
from pathlib import Path


from pipeline.compute.slurm import Plan, RUNS, collect, report, run_task, send, task_states, wait
from pipeline.errors import PipelineError, cli




def _latest_run(given: str | None) -> Path:
    if given:
        folder = RUNS / given
    else:
        runs = sorted(RUNS.glob("*/plan.json"), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise PipelineError(f"{RUNS}: no run sent from this workspace yet")
        folder = runs[-1].parent
    if not (folder / "plan.json").is_file():
        raise PipelineError(f"{folder}: no plan.json; runs: {', '.join(p.parent.name for p in RUNS.glob('*/plan.json'))}")
    return folder


def resources_of(args: argparse.Namespace) -> list[str]:
    return [f"--{key.replace('_', '-')}={value}" for key, value in
            (("cpus_per_task", args.cpus_per_task), ("gres", args.gres), ("time", args.time),
             ("partition", args.partition)) if value]


@cli  # it submits and waits; the work runs on the cluster
def main() -> None:
    parser = argparse.ArgumentParser(description="Folds and sweeps as Slurm jobs")
    sub = parser.add_subparsers(dest="action", required=True)
    sending = sub.add_parser("send", help="submit a sweep (its experiments, or each of their folds)")
    sending.add_argument("-S", "--set-param", action="append", default=[], dest="overrides",
                         help="as `dvc exp run --queue -S`: 'dropout=0.2,0.5' makes two experiments")
    sending.add_argument("--folds", action="store_true", help="one task per (experiment, model, fold)")
    sending.add_argument("--cpus-per-task", type=int, default=None)
    sending.add_argument("--gres", help="e.g. gpu:1")
    sending.add_argument("--time", help="each task's limit, e.g. 4:00:00")
    sending.add_argument("--partition")
    sending.add_argument("--git-remote", default="origin", help="a git remote (name or URL) every node reaches")
    sending.add_argument("--dvc-remote", default="", help="a DVC remote (name or URL); default: the default remote")
    sending.add_argument("--name", help="the run's name (default: s<commit>-<date>-<time>)")
    sending.add_argument("--wait", action="store_true", help="wait for every task, report, collect")
    sending.add_argument("--poll", type=float, default=10)
    sending.add_argument("--timeout", type=float, default=7 * 24 * 3600)
    for action in ("status", "collect"):
        sub.add_parser(action).add_argument("run", nargs="?")
    task = sub.add_parser("task", help="(run by the jobs) one task on its node")
    task.add_argument("folder", type=Path)
    task.add_argument("kind", choices=["prepare", "fold", "experiment"])
    task.add_argument("index")
    args = parser.parse_args()
    if args.action == "task":
        run_task(args.folder, args.kind, args.index)
        return
    if args.action == "send":
        plan = send(args.overrides, args.folds, resources_of(args), args.git_remote, args.dvc_remote, args.name)
        if not args.wait:
            return
        failures = report(plan, wait(plan, args.poll, args.timeout))
        collect(plan)
        if failures:
            raise PipelineError(f"{plan.run}: {len(failures)} task(s) did not finish; the first: {failures[0]}")
        return
    plan = Plan.load(_latest_run(args.run))
    if args.action == "status":
        report(plan, task_states(plan))
    else:
        collect(plan)


if __name__ == "__main__":
    main()
