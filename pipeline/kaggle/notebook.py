"""The notebook Kaggle runs for ``python -m pipeline.kernel train send``: this very file, pushed as the notebook's
script (pipeline/kaggle/send.py writes the run's name into PINNED_RUN of the pushed copy).

On Kaggle (a GPU, the internet off): the run's dataset is found under /kaggle/input by its ``train-run.json``; the
wheels built for the Python running are installed (``wheels/cp3XY/`` and the pure ``wheels/py3/``; one line naming
the Pythons shipped when none is this one); the commit is cloned from the bundle, the run's params are laid over
params.yaml with the competition as Kaggle mounts it as the data, and the training stages run one at a time. Each
stage's outputs and the lock reach ``/kaggle/working/<run>/`` the moment the stage ends, and ``trained.json`` says
which stages are done: a session that ends early (Kaggle's time limit, memory, a crash in fold 3) leaves what
finished for ``collect --partial``, and ``send --resume`` starts a new session from it (the earlier output mounted
under /kaggle/input; each stage it holds restored and checked by DVC's own hashes before anything trains).

Standard library only up to the clone (the image has no DVC before the wheels); the pipeline's modules after it,
from the clone: the same commit as this file.

    python pipeline/kaggle/notebook.py   # what Kaggle runs; KAGGLE_INPUT and KAGGLE_WORKING move its folders
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PINNED_RUN = None  # the pushed copy names its run here; None: the one run found under INPUT
INPUT = Path(os.environ.get("KAGGLE_INPUT", "/kaggle/input"))
WORKING = Path(os.environ.get("KAGGLE_WORKING", "/kaggle/working"))
RUN_FILE, BUNDLE, PROGRESS = "train-run.json", "repo.bundle", "trained.json"  # as pipeline/kaggle/train_run.py
WHEELS = "wheels"
PURE = "py3"  # the wheels every CPython takes
log = logging.getLogger(__name__)


def found(pattern: str) -> list[Path]:
    """The paths under INPUT matching ``pattern``: a dataset, a competition or a notebook's output is mounted one to
    four levels down (``/kaggle/input/<slug>``, ``/kaggle/input/datasets/<owner>/<slug>``, ...)."""
    return [path for depth in ("*", "*/*", "*/*/*", "*/*/*/*") for path in sorted(INPUT.glob(f"{depth}/{pattern}"))]


def python_tag(version_info=sys.version_info) -> str:
    """The wheel tag of a CPython: ``cp312`` for 3.12."""
    return f"cp{version_info[0]}{version_info[1]}"


def wheels_for(dataset: Path, version_info=sys.version_info) -> list[Path]:
    """The shipped wheels this Python installs: its own binary wheels and the pure ones; none for it is one line
    naming the Pythons the run shipped wheels for."""
    folder = dataset / WHEELS
    if not folder.is_dir():
        return []
    shipped = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name != PURE)
    if python_tag(version_info) not in shipped:
        raise SystemExit(f"error: {folder}: no wheels for Python {version_info[0]}.{version_info[1]} (this image's); "
                         f"the run shipped {', '.join(shipped) or 'none'}: send again with --packages index")
    return sorted([*(folder / python_tag(version_info)).glob("*.whl"), *(folder / PURE).glob("*.whl")])


def install(dataset: Path, plan: dict) -> None:
    """The packages the image lacks: the run's wheels (offline), or from PyPI (``--packages index``)."""
    if plan["packages"] == "wheels":
        wheels = wheels_for(dataset)
        arguments = ["--no-index", "--no-deps", *map(str, wheels)] if wheels else []
    else:  # this Python's, where the run resolved them for it; else those of the image's Python
        requirements = plan["requirements"]
        arguments = list(requirements.get(f"{sys.version_info[0]}.{sys.version_info[1]}")
                         or next(iter(requirements.values()), []))
    if arguments:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        *arguments], check=True)


def earlier_output(plan: dict) -> Path | None:
    """The folder of the run this one resumes, as the earlier session's output is mounted under INPUT."""
    if not plan.get("resumes"):
        return None
    for progress in found(f"{plan['resumes']}/{PROGRESS}"):
        return progress.parent
    raise SystemExit(f"error: {INPUT}: no output of run {plan['resumes']} mounted ({plan['resumes_notebook']}'s); "
                     f"its notebook must be a source of this one")


def main() -> None:
    runs = [path.parent for path in found(RUN_FILE)
            if PINNED_RUN is None or json.loads(path.read_text()).get("run") == PINNED_RUN]
    if len(runs) != 1:
        raise SystemExit(f"error: {INPUT}: {len(runs)} dataset(s) of run {PINNED_RUN or '(any)'}; expected one")
    dataset = runs[0]
    plan = json.loads((dataset / RUN_FILE).read_text())
    competition = next((path for path in [INPUT / plan["competition"], *found(plan["competition"])]
                        if path.is_dir() and not (path / RUN_FILE).exists()), None)
    if competition is None:
        raise SystemExit(f"error: {INPUT}: the competition {plan['competition']} is not mounted")
    earlier = earlier_output(plan)
    install(dataset, plan)
    repo = Path(tempfile.gettempdir()) / "pipeline-train" / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    subprocess.run(["git", "clone", "--quiet", str(dataset / BUNDLE), str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "advice.detachedHead=false", "checkout", "--quiet",
                    plan["commit"]], check=True)
    sys.path.insert(0, str(repo))
    for name in [n for n in sys.modules if n == "pipeline" or n.startswith("pipeline.")]:
        del sys.modules[name]  # this file ran as a script; the clone's package is the one to import
    from pipeline.errors import cli

    cli(lambda: train_here(dataset, competition, repo, WORKING / plan["run"], earlier))()


def train_here(dataset: Path, competition: Path, repo: Path, out: Path, earlier: Path | None = None) -> list[str]:
    """In the clone at ``repo``: the run's params, then every training stage in dvc.yaml's order, each one's outputs,
    the lock and ``trained.json`` written to ``out`` as it ends; the stages that ran here."""
    from pipeline.kaggle.train_run import LOCAL_STAGES, TrainRun, dvc, run_params, training_stages

    began = time.time()
    os.chdir(repo)  # DVC names the stages from where it runs
    plan = TrainRun(**json.loads((dataset / RUN_FILE).read_text()))
    run_params(repo / "params.yaml", plan.preset,
               [*plan.overrides, "data.source=local", f"data.local_path={competition}"])
    stages = training_stages(repo)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    dvc("repro", *LOCAL_STAGES, show=log.info)  # the raw data and the frame cache: never shipped, made here
    restored = restore(earlier, stages, repo) if earlier else []
    progress = {"run": plan.run, "commit": plan.commit, "planned": stages, "stages": [], "restored": restored,
                "complete": False,
                "machine": machine(), "versions": versions(), "python": sys.version.split()[0], "seconds": 0}
    ran = []
    for stage in stages:
        if stage not in restored:
            dvc("repro", stage, show=log.info)
            ran.append(stage)
        keep(stage, repo, out)
        progress["stages"].append(stage)
        progress["seconds"] = round(time.time() - began)
        write_atomically(out / PROGRESS, json.dumps(progress, indent=2) + "\n")
    progress["complete"] = True
    write_atomically(out / PROGRESS, json.dumps(progress, indent=2) + "\n")
    log.info("%s: %d stage(s) trained, %d restored from run %s; their outputs and dvc.lock in %s", plan.run,
             len(ran), len(restored), plan.resumes or "-", out)
    return ran


def keep(stage: str, repo: Path, out: Path) -> None:
    """``stage``'s outputs into ``out/outs`` and the whole lock into ``out/dvc.lock``, each copied aside first and
    then renamed: a session killed mid-copy leaves the last whole state."""
    import yaml

    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    for entry in lock["stages"][stage].get("outs", []):
        source, target = repo / entry["path"], out / "outs" / entry["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        aside = target.with_name(f".{target.name}.partial")
        copy_over(source, aside)
        remove(target)
        os.replace(aside, target)
    write_atomically(out / "dvc.lock", (repo / "dvc.lock").read_text())


def restore(earlier: Path, stages: list[str], repo: Path) -> list[str]:
    """The stages an earlier session finished, put back: their outputs copied from its output and committed to DVC
    here; a stage is restored only when DVC then records it as the earlier session did (every dependency's and
    output's hash, every param), else its outputs are removed and it trains again. The restored stages, in order."""
    import yaml

    from pipeline.kaggle.train_run import dvc, same_entry

    finished = json.loads((earlier / PROGRESS).read_text())["stages"]
    theirs = yaml.safe_load((earlier / "dvc.lock").read_text())["stages"]
    candidates = [s for s in stages if s in finished and s in theirs]
    for stage in candidates:
        for entry in theirs[stage].get("outs", []):
            copy_over(earlier / "outs" / entry["path"], repo / entry["path"])
    if not candidates:
        return []
    dvc("commit", "--force", "--quiet", *candidates)
    ours = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    restored = []
    for stage in candidates:
        if same_entry(ours.get(stage, {}), theirs[stage]):
            restored.append(stage)
            continue
        log.info("%s: not as the earlier session recorded it (code, params or data changed); trained again", stage)
        for entry in theirs[stage].get("outs", []):
            remove(repo / entry["path"])
    return restored


def copy_over(source: Path, target: Path) -> None:
    remove(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def write_atomically(path: Path, text: str) -> None:
    aside = path.with_name(f".{path.name}.partial")
    aside.write_text(text)
    os.replace(aside, path)


def machine() -> str:
    """The accelerator the run trained on: ``Tesla T4``, or ``cpu`` (each fold's metrics say it too)."""
    from pipeline.compute.devices import device_name, pick_device

    return device_name(pick_device())


def versions() -> dict[str, str]:
    import importlib.metadata

    found_versions = {}
    for name in ("torch", "timm", "opencv-python", "opencv-python-headless", "numpy", "dvc"):
        try:
            found_versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found_versions[name] = ""
    return found_versions


if __name__ == "__main__":
    main()
