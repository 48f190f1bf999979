"""``python -m pipeline.kernel train send``: a clean commit sent to Kaggle's GPUs.

Before anything goes up: the run's params are checked as the stages check them (the preset, then the ``-S`` values),
the account's weekly GPU hours looked up, and the competition's rules found accepted. Then one private dataset
version holds the commit (a git bundle: code, params.yaml, dvc.lock), the run's description (``train-run.json``)
and the wheels Kaggle's image lacks, for every CPython the image may have (pipeline/kaggle/wheels.py; ``--packages
index`` instead installs them from PyPI with the notebook's internet on); once Kaggle has it ready, the notebook
(pipeline/kaggle/notebook.py, pushed as it is) is pushed with the competition and the dataset as its data, and the
plan saved as ``.kaggle-train/<run>/plan.json`` for ``status`` and ``collect``.

``--resume RUN`` sends a run that starts from what RUN's session finished (``collect --partial RUN`` says what):
the same commit, preset and values, RUN's notebook as a source of the new one, whose finished stages are restored
and checked there, not trained again. The new session runs as the other of two notebooks
(``<competition>-train`` and ``<competition>-train-b``): a notebook's own output is not among its sources.

The run's time on one T4 is printed first (pipeline/training/costs.py, as `python -m pipeline.plan` estimates it);
past a session's 12 hours the run is refused unless ``--force``. ``--dry-run`` checks and prints the plan (the
estimate, each Python's wheels, the sources) and sends nothing.
"""
from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from pipeline.errors import PipelineError
import pipeline.kaggle.notebook as notebook_script
from pipeline.kaggle.train_run import AFTER_TRAINING, BUNDLE, RUN_FILE, RUNS, TrainRun, git, run_params
from pipeline.kaggle.wheels import PYTHONS, image_python, packages_to_ship, ship_wheels

log = logging.getLogger(__name__)
WHEEL_CACHE = Path.home() / ".cache" / "kaggle-image-pipeline" / "wheels"
NOTEBOOK_SOURCE = Path(notebook_script.__file__)  # pushed as it is, its run named
SESSION_S = 12 * 3600  # a Kaggle GPU session's limit


def send(owner: str, overrides: list[str], preset: Path | None, packages: str, accelerator: str, name: str | None,
         poll: float, wait: float, resume: str | None = None, dry_run: bool = False,
         find_links: Path | None = None, force: bool = False) -> TrainRun:
    """Upload the commit and push the training notebook; the run's plan (``.kaggle-train/<run>/plan.json``)."""
    from pipeline.config import load_params
    from pipeline.data.competitions import competition_of
    from pipeline.kaggle.client import authenticated_api

    commit = git("rev-parse", "HEAD").strip()
    earlier = resumed_run(resume, commit, overrides, preset) if resume else None
    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]
    if earlier and imported_here(earlier):  # `collect --partial` laid the run's params and lock over the commit's
        changed = [path for path in changed if path not in ("params.yaml", "dvc.lock")
                   and not path.startswith("metrics/")]
    if changed:
        raise PipelineError(f"the working tree has uncommitted changes ({changed[0]}): Kaggle trains the commit, so "
                            f"commit first")
    preset_text = earlier.preset if earlier else (preset.read_text() if preset else "")
    overrides = earlier.overrides if earlier else list(overrides)
    with tempfile.TemporaryDirectory() as scratch:  # the run's params checked here, before anything goes up
        shutil.copy2("params.yaml", Path(scratch) / "params.yaml")
        run_params(Path(scratch) / "params.yaml", preset_text, overrides)
        params, params_text = load_params(Path(scratch) / "params.yaml"), (Path(scratch) / "params.yaml").read_text()
        spec = competition_of(params)
    if not spec.kaggle:
        raise PipelineError(f"params.yaml: competition: {spec.slug} is not a Kaggle competition; a notebook trains "
                            f"on Kaggle's copy of a competition's files")
    run = name or f"k{commit[:7]}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder = RUNS / run
    if (folder / "plan.json").is_file():
        raise PipelineError(f"{folder}: a run of that name was sent already; give another --name")
    slug = f"{spec.slug[:40]}-train"
    notebook = f"{owner}/{slug}"
    if earlier and earlier.notebook == notebook:
        notebook += "-b"
    requirements = {python: packages_to_ship(python) for python in PYTHONS}
    plan = TrainRun(run, commit, spec.slug, f"{owner}/{slug}", notebook, overrides, preset_text,
                    earlier.preset_name if earlier else str(preset or ""), packages, requirements, accelerator,
                    resumes=earlier.run if earlier else "", resumes_notebook=earlier.notebook if earlier else "")
    fits_a_session(params, spec, params_text, anyway=dry_run or force, itemise=dry_run)
    if dry_run:
        return show_plan(plan, find_links)
    api = authenticated_api()
    check_quota(api, spec.slug)
    check_rules(spec.slug)
    try:
        return upload_and_push(api, plan, folder, poll, wait, find_links)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # no half-sent run: plan.json is written last
        raise


def fits_a_session(params, spec, params_text: str, anyway: bool, itemise: bool = False) -> None:
    """The run's time on one T4 (`python -m pipeline.plan`'s estimate, nothing cached on Kaggle), stage by stage
    with ``itemise``; past a session's limit it is refused unless ``anyway`` (a session cut short keeps the stages
    it finished)."""
    from pipeline.training.costs import dvc_stages, kaggle_session

    stages = [s for s in dvc_stages(params_text)[0] if s not in AFTER_TRAINING]
    seconds, estimate = kaggle_session(params, spec, stages)
    total = sum(seconds.values())
    longest = max(seconds, key=seconds.get)
    for stage, spent in seconds.items() if itemise else ():
        log.info("  %-34s %8.0f s on one T4", stage, spent)
    log.info("on one T4%s: %.1f h (%s the longest stage, %.1f h; `python -m pipeline.plan` itemises it)",
             " (an estimate: bench/gpu_costs.csv)" if estimate else "", total / 3600, longest, seconds[longest] / 3600)
    if total > SESSION_S and not anyway:
        raise PipelineError(f"the run is estimated at {total / 3600:.1f} h on one T4, past a Kaggle session's "
                            f"{SESSION_S // 3600} hours: fewer folds or epochs, or --force (a session cut short keeps "
                            f"its finished stages: collect --partial, then send --resume)")


def resumed_run(resume: str, commit: str, overrides: list[str], preset: Path | None) -> TrainRun:
    """The plan of the run to resume: sent from this commit, its preset and values taken as they were."""
    folder = RUNS / resume
    if not (folder / "plan.json").is_file():
        raise PipelineError(f"--resume {resume}: no such run sent from this workspace ({RUNS}/)")
    earlier = TrainRun.load(folder)
    if overrides or preset:
        raise PipelineError(f"--resume {resume}: takes that run's preset and values; give no --preset or -S")
    if earlier.commit != commit:
        raise PipelineError(f"--resume {resume}: that run trained commit {earlier.commit[:7]}, this is {commit[:7]}; "
                            f"check it out (`git checkout {earlier.commit[:7]}`) to resume it")
    return earlier


def imported_here(earlier: TrainRun) -> bool:
    """Whether params.yaml is the commit's with ``earlier``'s preset and values laid over it: what `collect
    --partial` leaves, whose lock and metrics follow it."""
    with tempfile.TemporaryDirectory() as scratch:
        committed = Path(scratch) / "params.yaml"
        committed.write_text(git("show", "HEAD:params.yaml"))
        run_params(committed, earlier.preset, earlier.overrides)
        return committed.read_text() == Path("params.yaml").read_text()


def show_plan(plan: TrainRun, find_links: Path | None) -> TrainRun:
    """What ``send`` would upload, printed; the wheels fetched into the cache (so that the real send is quick)."""
    log.info("run %s: commit %s of %s on %s%s", plan.run, plan.commit[:7], plan.competition, plan.accelerator,
             f", resuming {plan.resumes}" if plan.resumes else "")
    log.info("sources: the competition %s, the dataset %s%s", plan.competition, plan.dataset,
             f", the output of {plan.resumes_notebook}" if plan.resumes_notebook else "")
    from pipeline.kaggle.client import credentials_found

    if credentials_found():  # the read-only checks a real send makes first
        check_rules(plan.competition)
        log.info("the competition's rules: accepted by this account")
    else:
        log.info("the competition's rules: not checked (no Kaggle credentials here)")
    if plan.packages == "wheels":
        with tempfile.TemporaryDirectory() as scratch:
            ship_wheels(Path(scratch), WHEEL_CACHE, find_links=find_links)
            for folder in sorted(Path(scratch).iterdir()):
                wheels = sorted(folder.glob("*.whl"))
                size = sum(w.stat().st_size for w in wheels) / 2**20
                log.info("wheels/%s: %d wheels, %.1f MiB%s", folder.name, len(wheels), size,
                         " (every Python)" if folder.name == "py3" else "")
    log.info("Kaggle's image runs Python %s (pipeline/kaggle/kaggle_image.txt); nothing sent (--dry-run)",
             image_python())
    return plan


def upload_and_push(api, plan: TrainRun, folder: Path, poll: float, wait: float, find_links: Path | None) -> TrainRun:
    """The dataset (bundle, description, wheels) uploaded and the notebook pushed; plan.json written last."""
    from pipeline.kaggle.client import Resource, calling_kaggle, scrubbed
    from pipeline.kaggle.kernels import _quietly, upload_dataset

    dataset = folder / "dataset"
    dataset.mkdir(parents=True)
    git("bundle", "create", "--quiet", str((dataset / BUNDLE).resolve()), "HEAD")
    (dataset / RUN_FILE).write_text(plan.as_json())
    if plan.packages == "wheels":
        ship_wheels(dataset / "wheels", WHEEL_CACHE, find_links=find_links)
    (dataset / "dataset-metadata.json").write_text(json.dumps(
        {"title": f"{plan.competition[:32]} pipeline train", "id": plan.dataset, "licenses": [{"name": "CC0-1.0"}]},
        indent=2) + "\n")
    notebook = folder / "notebook"
    notebook.mkdir()
    slug = plan.notebook.split("/")[1]
    (notebook / f"{slug}.py").write_text(pushed_script(plan.run))
    (notebook / "kernel-metadata.json").write_text(json.dumps(
        {"id": plan.notebook, "title": slug, "code_file": f"{slug}.py", "language": "python",
         "kernel_type": "script", "is_private": True, "enable_gpu": True, "enable_internet": plan.packages == "index",
         "dataset_sources": [plan.dataset], "competition_sources": [plan.competition],
         "kernel_sources": [plan.resumes_notebook] if plan.resumes_notebook else [],
         "docker_image_pinning_type": "original"}, indent=2) + "\n")
    upload_dataset(api, dataset, plan.competition, f"run {plan.run} ({plan.commit[:7]})", poll, wait)
    pushed = calling_kaggle(lambda: _quietly(lambda: api.kernels_push(str(notebook), acc=plan.accelerator),
                                             notebook / "kernel-metadata.json"),
                            Resource("notebook", plan.notebook), "push")
    if getattr(pushed, "error", None):
        raise PipelineError(f"Kaggle refused the notebook {plan.notebook}: {scrubbed(pushed.error)}")
    for kind, refused in (("competition", pushed.invalid_competition_sources),
                          ("dataset", pushed.invalid_dataset_sources), ("notebook", pushed.invalid_kernel_sources)):
        if refused:  # checked before the push; Kaggle may still refuse one (a rule changed since)
            raise PipelineError(f"Kaggle refused the {kind} {refused[0]} as {plan.notebook}'s data after the push: "
                                f"its version {pushed.version_number} runs without it; cancel it on Kaggle")
    plan = replace(plan, version=int(pushed.version_number or 0))
    plan.save(folder)
    log.info("sent %s: commit %s as %s v%d on %s; `python -m pipeline.kernel train status %s`", plan.run,
             plan.commit[:7], plan.notebook, plan.version, plan.accelerator, plan.run)
    return plan


def pushed_script(run: str) -> str:
    """pipeline/kaggle/notebook.py as the notebook's script, its run named."""
    source = NOTEBOOK_SOURCE.read_text()
    pinned = source.replace("\nPINNED_RUN = None  #", f"\nPINNED_RUN = {run!r}  #", 1)
    if pinned == source:
        raise PipelineError(f"{NOTEBOOK_SOURCE}: no `PINNED_RUN = None` line to name the run in")
    return pinned


def check_rules(competition: str) -> None:
    """Refuse before anything goes up when this account has not accepted the competition's rules (a notebook
    pushed without its data would spend GPU hours on nothing)."""
    from pipeline.kaggle.client import has_entered

    if not has_entered(competition):
        raise PipelineError(f"this Kaggle account has not accepted the rules of {competition}: accept them at "
                            f"https://www.kaggle.com/competitions/{competition}/rules, then send again")


def check_quota(api, competition: str) -> None:
    """Refuse to push when the account's weekly GPU hours are spent; log what is left."""
    from pipeline.kaggle.client import calling_kaggle
    from pipeline.kaggle.kernels import _quietly

    quota = calling_kaggle(lambda: _quietly(api.quota_view), competition, "look up the GPU quota for")
    gpu = getattr(quota, "gpu_quota", None)
    if gpu is None or gpu.total_time_allowed is None:
        return
    used = (gpu.time_used.total_seconds() if gpu.time_used else 0) + (
        gpu.time_reserved.total_seconds() if gpu.time_reserved else 0)
    left = gpu.total_time_allowed.total_seconds() - used
    refresh = getattr(quota, "quota_refresh_time", None)
    if left <= 0:
        raise PipelineError(f"the account's weekly GPU quota is spent ({used / 3600:.1f} h of "
                            f"{gpu.total_time_allowed.total_seconds() / 3600:.1f} h used"
                            + (f"; it refreshes {refresh:%Y-%m-%d %H:%M} UTC" if refresh else "") + ")")
    log.info("GPU quota: %.1f h of %.1f h left this week", left / 3600, gpu.total_time_allowed.total_seconds() / 3600)
