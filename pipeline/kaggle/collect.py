"""``python -m pipeline.kernel train status|collect``: a session on Kaggle's GPUs as Kaggle reports it, and its output
taken back as a DVC experiment whose every dependency was checked against this workspace.

``collect`` downloads the session's output once, lays the run's preset and values over this workspace's
params.yaml, runs the stages made here (``dvc repro download sample frames``: the raw data and the frame cache are
this workspace's own), and compares every dependency of every imported stage with what Kaggle's lock says it was:
code (md5 of each file), params (each value) and data (the raw data, the sample and the frame cache against this
workspace's lock). One disagreement refuses the import in one line: params.yaml and dvc.lock as they were, nothing
of Kaggle's in the workspace. Else the lock entries are merged, the outputs put in place and into DVC's cache (their
hashes must come out as Kaggle's), ``dvc repro`` runs the rest here (ensemble, submission), and ``dvc exp save``
keeps it as experiment ``<run>``.

A session that ended early (an error, Kaggle's time limit) kept the stages it finished (pipeline/kaggle/notebook.py
writes each as it ends): ``collect --partial`` imports those, checked the same way, says which came back and which
did not, and trains nothing here; ``send --resume <run>`` trains the rest on Kaggle.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from pipeline.errors import PipelineError
from pipeline.kaggle.train_run import LOCAL_STAGES, PROGRESS, TrainRun, dvc, run_params

log = logging.getLogger(__name__)
ENDED_EARLY = ("error", "cancel_acknowledged", "cancel_requested")


def session_state(api, plan: TrainRun) -> tuple[str, str]:
    """(Kaggle's state of the run's notebook version, lowercase: queued, running, complete, error, ...; its failure
    message)."""
    from pipeline.kaggle.client import Resource, calling_kaggle
    from pipeline.kaggle.kernels import _quietly

    answer = calling_kaggle(lambda: _quietly(lambda: api.kernels_status(f"{plan.notebook}/{plan.version}")),
                            Resource("notebook", plan.notebook),
                            "look up the state of")
    state = str(getattr(answer.status, "name", answer.status)).lower().rsplit(".", 1)[-1]
    return state, str(getattr(answer, "failure_message", "") or "")


def status(plan: TrainRun) -> str:
    from pipeline.kaggle.client import authenticated_api, scrubbed

    state, failure = session_state(authenticated_api(), plan)
    line = f"{plan.run}: {plan.notebook} v{plan.version} {state}"
    if failure:
        line += f": {scrubbed(failure)}"
    log.info("%s", line)
    return state


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _value(params: dict, dotted: str):
    node = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return "<absent>"
        node = node[part]
    return node


def disagreements(kaggle_lock: dict, local_lock: dict, imported: list[str], params: dict, root: Path) -> list[str]:
    """Every dependency of the imported stages whose hash or value Kaggle's lock records differently from this
    workspace: code files by their md5, params by value, the outputs of the stages run here (raw data, sample,
    frames) by this workspace's lock; one line each, the file or key first."""
    produced_there = {o["path"] for s in imported for o in kaggle_lock["stages"][s].get("outs", [])}
    produced_here = {o["path"]: o.get("md5") for s in LOCAL_STAGES if s in local_lock.get("stages", {})
                     for o in local_lock["stages"][s].get("outs", [])}
    lines: list[str] = []
    for stage in imported:
        entry = kaggle_lock["stages"][stage]
        for dep in entry.get("deps", []):
            path = dep["path"]
            if path in produced_there:
                continue
            if path in produced_here:
                if produced_here[path] != dep.get("md5"):
                    lines.append(f"{path}: made here with md5 {produced_here[path]}, on Kaggle {dep.get('md5')} "
                                 f"(stage {stage})")
            elif not (root / path).is_file():
                lines.append(f"{path}: a dependency of {stage} on Kaggle, missing here")
            elif file_md5(root / path) != dep.get("md5"):
                lines.append(f"{path}: differs from the commit Kaggle trained (stage {stage}): a local edit or "
                             f"another commit since send")
        for key, value in (entry.get("params", {}).get("params.yaml") or {}).items():
            differs = _first_difference(key, _value(params, key), value)
            if differs:
                where, here, there = differs
                lines.append(f"params.yaml: {where}: {here!r} here, {there!r} on Kaggle (stage {stage})")
    return list(dict.fromkeys(lines))


def _first_difference(key: str, here, there) -> tuple[str, object, object] | None:
    """The first key under ``key`` (dotted) whose value differs between two params trees, with both values."""
    if isinstance(here, dict) and isinstance(there, dict):
        for name in [*here, *(n for n in there if n not in here)]:
            found = _first_difference(f"{key}.{name}", here.get(name, "<absent>"), there.get(name, "<absent>"))
            if found:
                return found
        return None
    return None if here == there else (key, here, there)


def collect(plan: TrainRun, folder: Path, partial: bool = False) -> str:
    """The run's output as experiment ``plan.run`` (see the module's docstring); its name. With ``partial``, a
    session that ended early: the stages it finished, imported, and nothing run here."""
    result = fetch_output(plan, folder, partial)
    trained = json.loads((result / PROGRESS).read_text())
    kaggle_lock = yaml.safe_load((result / "dvc.lock").read_text())
    imported, planned = trained["stages"], trained.get("planned", trained["stages"])
    if not trained.get("complete", True) and not partial:
        raise PipelineError(f"{plan.run}: the session finished {len(imported)} of its stages; `collect --partial "
                            f"{plan.run}` imports them, `send --resume {plan.run}` trains the rest")
    saved = {name: Path(name).read_bytes() if Path(name).is_file() else None for name in ("params.yaml", "dvc.lock")}

    def restore() -> None:
        for name, content in saved.items():
            if content is not None:
                Path(name).write_bytes(content)
            else:
                Path(name).unlink(missing_ok=True)
        subprocess.run([sys.executable, "-m", "dvc", "checkout", "--quiet", *LOCAL_STAGES, *imported],
                       capture_output=True)

    try:
        run_params(Path("params.yaml"), plan.preset, plan.overrides)
        dvc("repro", *LOCAL_STAGES, show=log.info)  # the raw data and the frame cache, this workspace's own
        local_lock = yaml.safe_load(Path("dvc.lock").read_text())
        params = yaml.safe_load(Path("params.yaml").read_text())
        found = disagreements(kaggle_lock, local_lock, imported, params, Path("."))
        if found:
            frames = [line for line in found if line.startswith("data/frames/")]
            if frames:
                here = _version("opencv-python") or _version("opencv-python-headless")
                there = trained["versions"].get("opencv-python") or trained["versions"].get("opencv-python-headless")
                found[found.index(frames[0])] += f"; the decoders: OpenCV {here} here, {there} on Kaggle"
            raise PipelineError(f"{plan.run}: not imported, {found[0]}"
                                + (f" (and {len(found) - 1} more)" if len(found) > 1 else ""))
        put_in_place(result, kaggle_lock, imported, local_lock, folder)
    except BaseException:
        restore()
        raise
    stale = json.loads(dvc("status", "--json", *imported) or "{}") if imported else {}
    if stale:
        raise PipelineError(f"{plan.run}: imported, yet `dvc status` finds {sorted(stale)[0]} changed")
    missing = [s for s in planned if s not in imported]
    if missing:
        log.info("%s: %d stage(s) came back (%s); not trained: %s. `python -m pipeline.kernel train send --resume %s` "
                 "trains them on Kaggle", plan.run, len(imported), ", ".join(imported) or "none", ", ".join(missing),
                 plan.run)
        return plan.run
    dvc("repro", show=log.info)  # the rest, here: the ensemble and the submission
    # A workspace that never committed a lock or metrics still keeps them with the experiment.
    dvc("exp", "save", "--force", "-n", plan.run, "--include-untracked", "dvc.lock", "--include-untracked", "metrics")
    restored = trained.get("restored") or []
    log.info("%s: %d stage(s) trained on Kaggle (%s, %d s)%s imported as experiment %s; `dvc exp show` lists it",
             plan.run, len(imported) - len(restored), trained["machine"], trained["seconds"],
             f" and {len(restored)} restored from run {plan.resumes}" if restored else "", plan.run)
    return plan.run


def fetch_output(plan: TrainRun, folder: Path, partial: bool) -> Path:
    """The session's output, downloaded once into ``folder/output``: the folder of the run in it."""
    from pipeline.kaggle.client import Resource, authenticated_api, calling_kaggle, scrubbed
    from pipeline.kaggle.kernels import _quietly

    output = folder / "output"
    result = output / plan.run
    if (result / PROGRESS).is_file():
        return result
    api = authenticated_api()
    state, failure = session_state(api, plan)
    ended_early = failure or state in ENDED_EARLY
    if state != "complete" and not (partial and ended_early):
        if ended_early:
            raise PipelineError(f"{plan.notebook} v{plan.version} did not finish ({state}): "
                                f"{scrubbed(failure or 'no reason given').rstrip('.')}; its log: `kaggle kernels "
                                f"output {plan.notebook}/{plan.version}`; `collect --partial {plan.run}` imports the "
                                f"stages it finished")
        raise PipelineError(f"{plan.notebook} v{plan.version} is {state}; collect once it is complete "
                            f"(`python -m pipeline.kernel train status {plan.run}`)")
    downloading = folder / ".output.partial"
    shutil.rmtree(downloading, ignore_errors=True)
    calling_kaggle(lambda: _quietly(lambda: api.kernels_output(f"{plan.notebook}/{plan.version}", str(downloading),
                                                                 force=True)),
                   Resource("notebook", plan.notebook), "download the output of")
    if not (downloading / plan.run / PROGRESS).is_file():
        raise PipelineError(f"{plan.notebook} v{plan.version}: its output holds no {plan.run}/{PROGRESS}: no stage "
                            f"finished; the notebook's log is in {downloading}")
    shutil.rmtree(output, ignore_errors=True)
    downloading.rename(output)
    return result


def put_in_place(result: Path, kaggle_lock: dict, imported: list[str], local_lock: dict, folder: Path) -> None:
    """The imported stages' outputs where the lock says, their entries merged into dvc.lock, and the outputs into
    DVC's cache: they must hash as Kaggle's lock says."""
    for stage in imported:
        for entry in kaggle_lock["stages"][stage].get("outs", []):
            target, source = Path(entry["path"]), result / "outs" / entry["path"]
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            target.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
    local_lock["stages"].update({stage: kaggle_lock["stages"][stage] for stage in imported})
    Path("dvc.lock").write_text(yaml.safe_dump(local_lock, sort_keys=False))
    if not imported:
        return
    dvc("commit", "--force", "--quiet", *imported)  # the outputs into DVC's cache, hashed again
    recommitted = yaml.safe_load(Path("dvc.lock").read_text())["stages"]
    changed = [o["path"] for s in imported for o, k in zip(recommitted[s].get("outs", []),
                                                             kaggle_lock["stages"][s].get("outs", []))
               if o.get("md5") != k.get("md5")]
    if changed:
        raise PipelineError(f"{changed[0]}: downloaded from Kaggle, it does not hash as Kaggle's lock says; collect "
                            f"again (the output is downloaded afresh after `rm -r {folder / 'output'}`)")


def _version(name: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""
