"""Folds and sweeps as Slurm jobs: the plan of a run (its experiments, folds and jobs), what each task does on its node
(a fresh clone of the git remote, `dvc repro` or `dvc exp run` with the remotes' outputs and run-cache, then a push),
and reading the jobs' states back. The command is `python -m pipeline.slurm` (its docstring has the flow).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)
RUNS = Path(".slurm")
# The stages every experiment of a sweep shares (none reads a param a sweep usually sets): run once, by `prepare`.
SHARED_STAGES = ("download", "sample", "frames", "folds")
DEPENDENCY_FAILED = ("DependencyNeverSatisfied",)


def _run(args: list[str], cwd: Path | None = None, env: dict | None = None) -> str:
    """A command's stdout; its failure as one line with the last line it wrote."""
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        detail = (done.stderr.strip() or done.stdout.strip()).splitlines() or ["?"]
        raise PipelineError(f"`{shlex.join(args[:4])}{' ...' if len(args) > 4 else ''}` failed "
                            f"(exit status {done.returncode}): {detail[-1]}")
    return done.stdout


@dataclass
class Plan:
    """What ``send`` submitted, saved as ``.slurm/<run>/plan.json``; every task reads it."""

    run: str
    folder: str  # the run's folder, absolute: logs, status, the plan
    commit: str
    git_remote: str  # a URL every node reaches
    dvc_remote: str  # a URL every node reaches ("" : the commit's default remote)
    python: str  # the interpreter the tasks run (a shared environment)
    experiments: list[dict]  # {"name", "overrides": ["dropout=0.2", ...]}
    models: list[str]
    folds: list[int] | None  # None: one task per experiment, not per fold
    identity: dict  # git author for experiment commits
    jobs: dict = field(default_factory=dict)  # kind ("prepare", "fold", "experiment-<name>") -> Slurm job id

    @classmethod
    def load(cls, folder: Path) -> "Plan":
        return cls(**json.loads((folder / "plan.json").read_text()))

    def save(self) -> None:
        (Path(self.folder) / "plan.json").write_text(json.dumps(asdict(self), indent=2) + "\n")

    def fold_tasks(self) -> list[tuple[int, str, int]]:
        """(experiment index, model, fold) of each task of the fold array, in array-index order."""
        return [(e, m, f) for e in range(len(self.experiments)) for m in self.models for f in self.folds or []]

    def tasks(self) -> list[str]:
        """Every task's name: ``prepare``, ``fold-<i>``, ``experiment-<name>``."""
        return (["prepare"] + [f"fold-{i}" for i in range(len(self.fold_tasks()))]
                + [f"experiment-{e['name']}" for e in self.experiments])


def experiments_of(overrides: list[str], prefix: str) -> list[dict]:
    """One experiment per point of the sweep, in DVC's own grammar (``dvc exp run --queue -S``: comma lists,
    ``range(...)``, several ``-S`` make a grid), each named for its changes."""
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import get_hydra_sweeps

    points = get_hydra_sweeps(to_path_overrides(overrides)) if overrides else [{"params.yaml": []}]
    experiments = []
    for point in points:
        changes = point.get("params.yaml", [])
        label = "_".join(re.sub(r"[^A-Za-z0-9.=-]+", "-", c).replace("=", "-").lstrip("+") for c in changes)
        experiments.append({"name": f"{prefix}-{label}" if label else prefix, "overrides": changes})
    return experiments


def _remote_url(name_or_url: str, cwd: Path) -> str:
    """A git remote's URL (a name of `git remote`, or the URL itself); a local path made absolute."""
    names = _run(["git", "remote"], cwd).split()
    url = _run(["git", "remote", "get-url", name_or_url], cwd).strip() if name_or_url in names else name_or_url
    return str(Path(url).resolve()) if Path(url).exists() else url


def dvc_remote_url(name_or_url: str, cwd: Path) -> str:
    """The DVC remote the tasks push to: a remote's name (default: the default remote) or a URL. Read from DVC's
    own merged config (local paths made absolute there), not from `dvc remote list`, which wraps long paths."""
    from dvc.repo import Repo

    with Repo(str(cwd)) as repo:
        remotes, default = repo.config["remote"], repo.config["core"].get("remote", "")
    name_or_url = name_or_url or default
    if not name_or_url:
        raise PipelineError("no DVC remote: the tasks share the frame cache, the features and the folds through "
                            "one (`dvc remote add -d <name> <url>`, or --dvc-remote)")
    url = remotes[name_or_url]["url"] if name_or_url in remotes else name_or_url
    return str(Path(url).resolve()) if Path(url).exists() else url


ARRAY_INDEX = "$SLURM_ARRAY_TASK_ID"  # left for the job's shell to expand


def sbatch(args: list[str], command: list[str]) -> str:
    """Submit ``command`` (run by the job's shell) with sbatch ``args``; the job id."""
    if shutil.which("sbatch") is None:
        raise PipelineError("sbatch: not found; run this where Slurm's commands are (a login node)")
    wrapped = " ".join(f'"{part}"' if part == ARRAY_INDEX else shlex.quote(part) for part in command)
    return _run(["sbatch", "--parsable", *args, "--wrap", wrapped]).strip().split(";")[0]


def send(overrides: list[str], by_fold: bool, resources: list[str], git_remote: str, dvc_remote: str,
         name: str | None) -> Plan:
    """Submit the sweep's jobs (the working tree must be committed and pushed: the tasks clone the remote)."""
    from pipeline.config import load_params

    repo = Path.cwd()
    commit = _run(["git", "rev-parse", "HEAD"], repo).strip()
    if _run(["git", "status", "--porcelain", "--untracked-files=no"], repo).strip():
        raise PipelineError("the working tree has uncommitted changes: the tasks clone the commit, so commit (and "
                            "push) first")
    url = _remote_url(git_remote, repo)
    remote_commits = _run(["git", "ls-remote", url], repo)
    if commit not in remote_commits and _run(["git", "branch", "-r", "--contains", commit], repo).strip() == "":
        raise PipelineError(f"{git_remote}: does not hold commit {commit[:7]}; `git push` it first (the tasks clone "
                            f"the remote)")
    params = load_params()
    run = name or f"s{commit[:7]}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder = (RUNS / run).resolve()
    for sub in ("logs", "status"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    identity = git_identity(repo)
    plan = Plan(run, str(folder), commit, url, dvc_remote_url(dvc_remote, repo), sys.executable,
                experiments_of(overrides, run), list(params.finetune.models),
                list(params.finetune.folds) if by_fold else None, identity)
    plan.save()

    def task(kind: str, index: str) -> list[str]:
        return [plan.python, "-m", "pipeline.slurm", "task", str(folder), kind, index]

    logs = folder / "logs"
    common = [f"--job-name=pipeline-{run}", *resources]
    plan.jobs["prepare"] = sbatch([*common, f"--output={logs}/prepare.log"], task("prepare", "0"))
    after = f"--dependency=afterok:{plan.jobs['prepare']}"
    if by_fold:
        count = len(plan.fold_tasks())
        plan.jobs["fold"] = sbatch([*common, after, f"--array=0-{count - 1}", f"--output={logs}/fold-%a.log"],
                                   task("fold", ARRAY_INDEX))
    for e, experiment in enumerate(plan.experiments):
        if by_fold:
            mine = [i for i, (owner, _, _) in enumerate(plan.fold_tasks()) if owner == e]
            depends = "--dependency=afterok:" + ":".join(f"{plan.jobs['fold']}_{i}" for i in mine)
        else:
            depends = after
        plan.jobs[f"experiment-{experiment['name']}"] = sbatch(
            [*common, depends, f"--output={logs}/experiment-{experiment['name']}.log"],
            task("experiment", experiment["name"]))
    plan.save()
    log.info("sent %s: %d experiment(s)%s as %d Slurm job(s) from commit %s; `python -m pipeline.slurm status %s`",
             run, len(plan.experiments), f" x {len(plan.folds)} fold(s)" if by_fold else "", len(plan.jobs),
             commit[:7], run)
    return plan


def git_identity(repo: Path) -> dict:
    """The submitter's git author (config or environment), for the experiment commits the tasks make; a fixed one
    when there is none (a fresh node has no identity of its own)."""
    found = subprocess.run(["git", "var", "GIT_AUTHOR_IDENT"], cwd=repo, capture_output=True, text=True)
    match = re.match(r"(.+?) <(.*)>", found.stdout) if found.returncode == 0 else None
    name, email = (match[1], match[2]) if match else ("pipeline-slurm", "pipeline-slurm@localhost")
    return {"user.name": name, "user.email": email}


def _write_status(folder: Path, task: str, **fields) -> None:
    path = folder / "status" / f"{task}.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**previous, **fields}, indent=2) + "\n")
    tmp.replace(path)


def run_task(folder: Path, kind: str, index: str) -> None:
    """One task on its node: a fresh clone at the plan's commit, its DVC command, the push."""
    plan = Plan.load(folder)
    name = kind if kind == "prepare" else f"{kind}-{index}"
    _write_status(folder, name, state="running", job=os.environ.get("SLURM_JOB_ID", ""),
                  node=os.environ.get("SLURMD_NODENAME", ""), started=time.time())

    def cancelled(signum, frame):  # scancel: SIGTERM first; nothing is pushed after it
        _write_status(folder, name, state="cancelled", ended=time.time(), signal=signum)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, cancelled)
    if kind == "fold":
        experiment, model, fold = plan.fold_tasks()[int(index)]
        done = fold_results(plan, plan.experiments[experiment]["name"]) / f"finetune@{model}-{fold}"
        if done.is_dir():  # trained and pushed by an earlier send of the same sweep at the same commit
            log.info("%s: finetune@%s-%d trained before (%s); nothing to do", name, model, fold, done)
            _write_status(folder, name, state="done", restored=str(done), ended=time.time())
            return
    scratch = Path(tempfile.mkdtemp(prefix=f"pipeline-{plan.run}-{name}-"))
    try:
        clone = scratch / "repo"
        step = "clone"
        _run(["git", "clone", "--quiet", plan.git_remote, str(clone)])
        _run(["git", "checkout", "--quiet", plan.commit], clone)
        for key, value in plan.identity.items():
            _run(["git", "config", key, value], clone)
        dvc = [plan.python, "-m", "dvc"]
        env = {**os.environ, "PYTHONPATH": str(clone)}
        if plan.dvc_remote:
            _run(dvc + ["remote", "add", "--local", "--default", "--force", "slurm", plan.dvc_remote], clone, env)
        for step, command in task_commands(plan, kind, index, clone):
            log.info("%s: %s", name, shlex.join(command))
            if command[0] in OWN_STEPS:
                OWN_STEPS[command[0]](plan, clone, *command[1:])
                continue
            argv = [*dvc, *command]
            done = subprocess.run(argv, cwd=clone, env=env)
            if done.returncode != 0:
                _write_status(folder, name, state="failed", step=step, exit=done.returncode, ended=time.time(),
                              error=dvc_error(folder / "logs" / f"{name}.log"))
                sys.exit(done.returncode)
        _write_status(folder, name, state="done", ended=time.time())
    except PipelineError as error:
        _write_status(folder, name, state="failed", step=step, exit=2, error=str(error), ended=time.time())
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def dvc_error(log_file: Path) -> str:
    """DVC's own reason for a failed step: the last ``ERROR:`` line its command wrote to the task's log (Slurm's
    output file), so that the failure reads in one line without opening the log."""
    lines = log_file.read_text(errors="replace").splitlines() if log_file.is_file() else []
    return next((line.removeprefix("ERROR:").strip() for line in reversed(lines) if line.startswith("ERROR")), "")


def task_commands(plan: Plan, kind: str, index: str, clone: Path) -> list[tuple[str, list[str]]]:
    """(step, command) of one task: DVC's commands, and this module's own steps (``OWN_STEPS``)."""
    if kind == "prepare":
        stages = [s for s in _run([plan.python, "-m", "dvc", "stage", "list", "--name-only"], clone).split()
                  if s in SHARED_STAGES or s.startswith("features@")]
        return [("repro", ["repro", "--pull", "--allow-missing", *stages]), ("push", ["push", "--run-cache"])]
    if kind == "fold":
        experiment, model, fold = plan.fold_tasks()[int(index)]
        stage = f"finetune@{model}-{fold}"
        return [("params", ["apply-overrides", *plan.experiments[experiment]["overrides"]]),
                ("params", ["check-params"]),
                ("repro", ["repro", "--pull", "--allow-missing", stage]),
                ("push", ["push"]),
                ("export", ["export-fold", plan.experiments[experiment]["name"], stage])]
    experiment = next(e for e in plan.experiments if e["name"] == index)
    settings = [arg for override in experiment["overrides"] for arg in ("-S", override)]
    steps = []
    if plan.folds is not None:  # its folds as trained by their tasks: the lock entries, then the outputs
        e = plan.experiments.index(experiment)
        stages = [f"finetune@{m}-{f}" for owner, m, f in plan.fold_tasks() if owner == e]
        steps = [("import", ["import-folds", experiment["name"]]), ("pull", ["pull", *stages])]
    return [*steps,
            ("exp run", ["exp", "run", "--pull", "--allow-missing", "-n", experiment["name"], *settings]),
            ("exp push", ["exp", "push", plan.git_remote, experiment["name"]]),
            ("push", ["push", "--run-cache"])]


def apply_overrides(plan: Plan, clone: Path, *overrides: str) -> None:
    """``-S`` values written into params.yaml as `dvc exp run -S` writes them (DVC's own code)."""
    from dvc.utils.hydra import apply_overrides as dvc_apply

    if overrides:
        dvc_apply(clone / "params.yaml", list(overrides))


def check_params(plan: Plan, clone: Path) -> None:
    """params.yaml as the stages will read it, refused here in one line: a bad value fails its task in a second,
    not after its data were pulled."""
    from pipeline.config import load_params
    from pipeline.data.competitions import competition_of

    competition_of(load_params(clone / "params.yaml"), clone / "params.yaml")


def fold_results(plan: Plan, experiment: str) -> Path:
    """Where the trained folds of ``experiment`` wait for its experiment task: beside the runs, keyed by the commit
    and the experiment's overrides, so that the same sweep sent again finds the folds it trained before."""
    overrides = next(e["overrides"] for e in plan.experiments if e["name"] == experiment)
    key = hashlib.sha256(json.dumps(sorted(overrides)).encode()).hexdigest()[:16]
    return Path(plan.folder).parent / "results" / plan.commit / key


def export_fold(plan: Plan, clone: Path, experiment: str, stage: str) -> None:
    """A trained fold, for its experiment's task to take up: the stage's dvc.lock entry and its metrics and curves
    (not in DVC's cache), into the run's folder, after its outputs were pushed. The run-cache cannot carry it: DVC
    keeps none for a stage with persistent outputs (the fold's checkpoints persist so a killed run resumes)."""
    lock = yaml.safe_load((clone / "dvc.lock").read_text())["stages"][stage]
    target = fold_results(plan, experiment) / stage
    partial = target.with_name(f".{stage}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for out in lock.get("outs", []):  # the uncached ones: the stage's metrics and curves, under metrics/
        path = clone / out["path"]
        if out["path"].startswith("metrics/") and path.exists():
            (partial / out["path"]).parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if path.is_dir() else shutil.copy2)(path, partial / out["path"])
    (partial / "lock.yaml").write_text(yaml.safe_dump(lock, sort_keys=False))
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)  # whole or not at all: a task killed before this left nothing here


def import_folds(plan: Plan, clone: Path, experiment: str) -> None:
    """Every fold of ``experiment`` that its tasks trained, as if it had run in this clone: its dvc.lock entry (so
    `dvc exp run` finds the stage unchanged and pulls its outputs from the remote) and its uncached files."""
    lock_path = clone / "dvc.lock"
    lock = yaml.safe_load(lock_path.read_text()) if lock_path.is_file() else {"schema": "2.0", "stages": {}}
    for result in sorted(fold_results(plan, experiment).glob("finetune@*")):
        lock["stages"][result.name] = yaml.safe_load((result / "lock.yaml").read_text())
        for path in result.rglob("*"):
            if path.is_file() and path.name != "lock.yaml":
                target = clone / path.relative_to(result)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
    lock_path.write_text(yaml.safe_dump(lock, sort_keys=False))


OWN_STEPS = {"apply-overrides": apply_overrides, "check-params": check_params, "export-fold": export_fold,
             "import-folds": import_folds}


def queued() -> dict[str, tuple[str, str]]:
    """Slurm's queue: job id (``<array>_<task>`` for array tasks) -> (state, reason)."""
    if shutil.which("squeue") is None:
        return {}
    listed = _run(["squeue", "--noheader", "--array", "--format=%i|%T|%r"])
    return {job: (state, reason) for job, state, reason in (line.split("|", 2) for line in listed.splitlines())}


def dependencies(plan: Plan, task: str) -> list[str]:
    """The tasks ``task`` waits for (``--dependency=afterok``)."""
    if task == "prepare":
        return []
    if task.startswith("fold-") or plan.folds is None:
        return ["prepare"]
    e = next(i for i, x in enumerate(plan.experiments) if f"experiment-{x['name']}" == task)
    return [f"fold-{i}" for i, (owner, _, _) in enumerate(plan.fold_tasks()) if owner == e]


def task_states(plan: Plan) -> dict[str, dict]:
    """Every task's state: its own record (running, done, failed, cancelled), or Slurm's while it waits. A task
    waiting on one that did not finish will never start (Slurm keeps it pending, reason DependencyNeverSatisfied, and
    ``sbatch --wait`` would call it a success): ``never started``, with the task it waited for."""
    folder, queue = Path(plan.folder), queued()
    states: dict[str, dict] = {}
    for task in plan.tasks():  # in order: a task's dependencies come before it
        job = _job_of(plan, task)
        recorded = folder / "status" / f"{task}.json"
        state = json.loads(recorded.read_text()) if recorded.is_file() else {"state": "not started"}
        slurm_state, reason = queue.get(job, ("", ""))
        if slurm_state:
            state.update(slurm=slurm_state.lower(), reason=reason)
        unfinished = [d for d in dependencies(plan, task) if states[d]["state"] not in ("done", "running",
                                                                                       "not started")]
        if state["state"] == "not started" and (unfinished or reason in DEPENDENCY_FAILED or not slurm_state):
            # Its dependency ended badly; or it left the queue without starting (scancel).
            state.update(state="never started", because=unfinished[0] if unfinished else "")
        elif state["state"] == "running" and not slurm_state:
            state["state"] = "killed"  # gone from the queue without a record of its end
        states[task] = {**state, "job": job, "log": str(folder / "logs" / f"{task}.log")}
    return states


def _job_of(plan: Plan, task: str) -> str:
    if task.startswith("fold-"):
        return f"{plan.jobs.get('fold', '')}_{task.removeprefix('fold-')}"
    return plan.jobs.get(task, "")


def wait(plan: Plan, poll: float, timeout: float) -> dict[str, dict]:
    """Until no task can still run; the jobs that never will (a failed dependency) are cancelled."""
    started = time.monotonic()
    while True:
        states = task_states(plan)
        waiting = [t for t, s in states.items() if s["state"] in ("running", "not started")]
        if not waiting:
            break
        if time.monotonic() - started > timeout:
            raise PipelineError(f"{plan.run}: {len(waiting)} task(s) still queued or running after {timeout:.0f} s "
                                f"(`squeue`); `python -m pipeline.slurm status {plan.run}` later")
        time.sleep(poll)
    never = [s["job"] for s in states.values() if s["state"] == "never started" and s.get("slurm")]
    if never:
        subprocess.run(["scancel", *never], capture_output=True)
    return states


def report(plan: Plan, states: dict[str, dict]) -> list[str]:
    """One line per task that did not finish; logged. Returns those lines."""
    lines = []
    for task, state in states.items():
        if state["state"] == "done":
            continue
        what = {"failed": f"failed at {state.get('step', '?')} (exit status {state.get('exit', '?')})"
                + (f": {state['error']}" if state.get("error") else ""),
                "never started": f"never started: {state.get('because') or 'a job it depends on'} did not finish"
                + (f" (Slurm: {state['reason']})" if state.get("reason") else ""),
                "cancelled": "cancelled (scancel) before it pushed anything",
                "killed": "killed before it could record its end",
                }.get(state["state"], state["state"])
        lines.append(f"{plan.run} {task} (job {state['job']}): {what}; log {state['log']}")
    for line in lines:
        log.info("%s", line)
    done = sum(s["state"] == "done" for s in states.values())
    log.info("%s: %d of %d task(s) done", plan.run, done, len(states))
    return lines


def collect(plan: Plan) -> list[str]:
    """Pull every experiment of the run that was pushed back; their names."""
    states = task_states(plan)
    finished = [e["name"] for e in plan.experiments if states[f"experiment-{e['name']}"]["state"] == "done"]
    if finished:
        _run([sys.executable, "-m", "dvc", "exp", "pull", plan.git_remote, *finished])
    log.info("%s: pulled %d experiment(s) (%s); `dvc exp show` lists them", plan.run, len(finished),
             ", ".join(finished) or "none finished")
    return finished
