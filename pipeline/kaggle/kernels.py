"""The run as a Kaggle notebook: its offline bundle (the wheel, the run's params, models and description) uploaded as a
dataset, the notebook that predicts from it alone with the internet off, and its output submitted. The notebook's
own text is NOTEBOOK. Used by `python -m pipeline.kernel`.
"""
from __future__ import annotations

import logging
import contextlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from pipeline.config import load_params
from pipeline.data.competitions import competition_of
from pipeline.ensemble.submission_format import recorded_cv
from pipeline.errors import PipelineError
from pipeline.kaggle.client import Resource, authenticated_api, calling_kaggle, scrubbed
from pipeline.kaggle.inference import MANIFEST, write_bundle
from pipeline.kaggle.scores import RECORD, record, wait_for_score, wait_until
from pipeline.kaggle.submissions import git_output, save_experiment  # the same as a CSV submission's
from pipeline.paths import metrics_dir

KERNEL = Path("kernel")


SUBMISSION_FILE = "submission.csv"
NOTEBOOK = '''"""{competition}: the pipeline's run {run} ({source}), predicted offline.

Written by `python -m pipeline.kernel build`; the run's bundle and the pipeline's wheel are the dataset {dataset}.
"""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

INPUT = Path(os.environ.get("KAGGLE_INPUT", "/kaggle/input"))
WORKING = Path(os.environ.get("KAGGLE_WORKING", "/kaggle/working"))
RUN, COMPETITION = {run!r}, {competition!r}


def found(pattern):
    """The folders under INPUT (a dataset or competition is mounted one to three levels down) matching pattern."""
    return [path for depth in ("*", "*/*", "*/*/*") for path in sorted(INPUT.glob(f"{{depth}}/{{pattern}}"))]


bundle = next(path.parent for path in found("{manifest}") if json.loads(path.read_text()).get("run") == RUN)
competition = next(path for path in [INPUT / COMPETITION, *found(COMPETITION)] if path.is_dir())
packages = WORKING / "pipeline-packages"
subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target",
                str(packages), *map(str, sorted(bundle.glob("*.whl")))], check=True)
sys.path.insert(0, str(packages))

from pipeline.errors import cli  # noqa: E402  (from the wheel just installed)
from pipeline.kaggle.inference import predict_submission  # noqa: E402

cli(lambda: predict_submission(bundle, competition, WORKING / "{submission}",
                               Path(tempfile.gettempdir()) / "pipeline-work"))()
'''

log = logging.getLogger(__name__)


def owner_name(given: str | None) -> str:
    """The Kaggle account the dataset and the notebook belong to: ``--owner``, else the credentials' user name."""
    if given:
        return given
    if os.environ.get("KAGGLE_USERNAME"):
        return os.environ["KAGGLE_USERNAME"]
    for folder in (Path(os.environ["KAGGLE_CONFIG_DIR"]),) if os.environ.get("KAGGLE_CONFIG_DIR") else (
            Path.home() / ".kaggle", Path.home() / ".config" / "kaggle"):
        if (folder / "kaggle.json").is_file():
            return json.loads((folder / "kaggle.json").read_text()).get("username", "")
    raise PipelineError("no Kaggle user name: give --owner, or set KAGGLE_USERNAME (or ~/.kaggle/kaggle.json)")


def slugs(competition: str) -> tuple[str, str]:
    """(dataset slug, notebook slug) of a competition's run: Kaggle wants 6 to 50 characters."""
    return f"{competition[:46]}-run", f"{competition[:40]}-inference"


def build_wheel(out: Path) -> Path:
    """The pipeline's own wheel (no dependencies: the notebook's come with Kaggle's image) into ``out``."""
    isolation = [] if importlib.util.find_spec("setuptools") else ["--use-pep517"]
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out),
                            *(["--no-build-isolation"] if not isolation else isolation), "."],
                           capture_output=True, text=True)
    if built.returncode != 0:
        detail = (built.stderr.strip().splitlines() or ["?"])[-1]
        raise PipelineError(f"pyproject.toml: `pip wheel` could not build the pipeline's wheel ({detail})")
    return next(out.glob("*.whl"))


def build(owner: str, out: Path = KERNEL) -> dict:
    """``out``/dataset and ``out``/notebook for the workspace's run (``out`` replaced); run.json's content."""
    params = load_params()
    spec = competition_of(params)
    if not spec.kaggle:
        raise PipelineError(f"params.yaml: competition: {spec.slug} is not a Kaggle competition; a notebook runs on "
                            f"Kaggle's copy of a competition's files")
    made_path = metrics_dir("submission") / "metrics.json"
    made = json.loads(made_path.read_text()) if made_path.is_file() else {}
    if not made.get("sha256"):
        raise PipelineError(f"{made_path}: records no submission of this workspace's run (a data.sample run writes "
                            f"none); run `dvc repro` first")
    dataset_slug, notebook_slug = slugs(spec.slug)
    commit = git_output("rev-parse", "--short", "HEAD") or "no-commit"
    source = {"commit": commit, "experiment": made.get("experiment", ""), "cv_log_loss": recorded_cv(made)}
    if out.exists():
        shutil.rmtree(out)
    manifest = write_bundle(params, out / "dataset", source)
    build_wheel(out / "dataset")
    (out / "dataset" / "dataset-metadata.json").write_text(json.dumps(
        {"title": f"{spec.slug[:36]} pipeline run", "id": f"{owner}/{dataset_slug}",
         "licenses": [{"name": "CC0-1.0"}]}, indent=2) + "\n")
    notebook = out / "notebook"
    notebook.mkdir()
    described = " ".join(p for p in (commit, source["experiment"],
                                     f"cv={source['cv_log_loss']:.4f}" if source["cv_log_loss"] is not None else "")
                         if p)
    (notebook / f"{notebook_slug}.py").write_text(NOTEBOOK.format(
        competition=spec.slug, run=manifest["run"], source=described, dataset=f"{owner}/{dataset_slug}",
        manifest=MANIFEST, submission=SUBMISSION_FILE))
    (notebook / "kernel-metadata.json").write_text(json.dumps(
        {"id": f"{owner}/{notebook_slug}", "title": notebook_slug, "code_file": f"{notebook_slug}.py",
         "language": "python", "kernel_type": "script", "is_private": True, "enable_gpu": manifest["gpu"],
         "enable_internet": False, "dataset_sources": [f"{owner}/{dataset_slug}"],
         "competition_sources": [spec.slug], "kernel_sources": []}, indent=2) + "\n")
    log.info("wrote %s: the run %s as dataset %s/%s and notebook %s/%s", out, manifest["run"], owner, dataset_slug,
             owner, notebook_slug)
    return manifest


def _quietly(call, metadata: Path | None = None):
    """``call()``, the client's printing kept out (the pipeline logs its own progress); the client's refusal of a
    metadata file (a ValueError) as one line naming ``metadata``."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return call()
    except ValueError as error:
        if metadata is None:
            raise  # calling_kaggle words it, naming what the call was about
        raise PipelineError(f"{metadata}: {scrubbed(str(error))}") from None


def upload_dataset(api, folder: Path, competition: str, notes: str, poll: float, timeout: float) -> str:
    """A new version of the run's dataset (a new dataset the first time), once Kaggle has it ready; its ref. A
    version whose processing failed ends the wait at once (Kaggle's status answer holds no reason)."""
    metadata = folder / "dataset-metadata.json"
    ref = json.loads(metadata.read_text())["id"]
    before = _dataset_version(api, ref)
    if before is not None:
        answer = calling_kaggle(lambda: _quietly(lambda: api.dataset_create_version(
            str(folder), notes, quiet=True, dir_mode="skip"), metadata), Resource("dataset", ref),
            "upload a new version of")
    else:
        answer = calling_kaggle(lambda: _quietly(lambda: api.dataset_create_new(
            str(folder), public=False, quiet=True, dir_mode="skip"), metadata), Resource("dataset", ref), "create")
    if getattr(answer, "error", None):
        raise PipelineError(f"Kaggle refused the dataset {ref}: {scrubbed(answer.error)}")
    status = [""]

    def ready() -> bool | None:
        answer = json.loads(calling_kaggle(lambda: _quietly(lambda: api.dataset_status(
            ref, format="json(status,current_version_number)")), Resource("dataset", ref), "look up the state of"))
        status[0] = str(answer.get("status", "")).lower()
        newer = before is None or int(answer.get("current_version_number") or 0) > before
        if status[0] == "failed" and newer:
            raise PipelineError(f"Kaggle could not process the dataset {ref} (status failed; Kaggle gives no "
                                f"reason: see https://www.kaggle.com/datasets/{ref}); send again")
        return True if status[0] == "ready" and newer else None

    wait_until(ready, f"waiting for dataset {ref}", poll, timeout,
               lambda: f"dataset {ref} not ready after {timeout:.0f} s (status {status[0]})")
    return ref


def _dataset_version(api, ref: str) -> int | None:
    """The dataset's current version number, or None where Kaggle has no such dataset (yet)."""
    import requests

    def look() -> dict | None:
        try:
            return json.loads(_quietly(lambda: api.dataset_status(ref, format="json(status,current_version_number)")))
        except requests.HTTPError as error:
            if getattr(error.response, "status_code", None) in (403, 404):
                return None
            raise

    answer = calling_kaggle(look, Resource("dataset", ref), "look up")
    return None if answer is None else int(answer.get("current_version_number") or 0)


def run_notebook(api, folder: Path, competition: str, poll: float, timeout: float) -> tuple[str, int]:
    """Push the notebook and wait until Kaggle has run it; (owner/slug, the version that ran)."""
    metadata = folder / "kernel-metadata.json"
    ref = json.loads(metadata.read_text())["id"]
    pushed = calling_kaggle(lambda: _quietly(lambda: api.kernels_push(str(folder)), metadata),
                            Resource("notebook", ref),
                            "push")
    if getattr(pushed, "error", None):
        raise PipelineError(f"Kaggle refused the notebook {ref}: {scrubbed(pushed.error)}")
    version = int(pushed.version_number)
    status = [""]

    def ran() -> tuple[str, int] | None:
        answer = calling_kaggle(lambda: _quietly(lambda: api.kernels_status(f"{ref}/{version}")),
                                Resource("notebook", ref),
                                "look up the state of")
        status[0] = str(getattr(answer.status, "name", answer.status)).lower()
        if status[0].endswith(("error", "cancel_acknowledged", "cancel_requested")):
            raise PipelineError(f"notebook {ref} v{version} did not finish ({status[0]}): "
                                f"{scrubbed(answer.failure_message or 'no reason given')}; its log is on Kaggle "
                                f"(`kaggle kernels output {ref}`)")
        return (ref, version) if status[0].endswith("complete") else None

    return wait_until(ran, f"waiting for notebook {ref} v{version}", poll, timeout, lambda: (
        f"notebook {ref} v{version} still {status[0]} after {timeout:.0f} s; submit it by hand when it ends: "
        f"kaggle competitions submit {competition} -k {ref} -v {version} -f {SUBMISSION_FILE} -m \"...\""))


def push(owner: str, message: str | None, wait: float, poll: float) -> dict:
    """build, upload, run, submit and score; the leaderboard record."""

    manifest = build(owner)
    spec = competition_of(load_params())
    api = authenticated_api()
    upload_dataset(api, KERNEL / "dataset", spec.slug, f"run {manifest['run']}", poll, wait)
    ref, version = run_notebook(api, KERNEL / "notebook", spec.slug, poll, wait)
    parts = [manifest["commit"], manifest["experiment"],
             f"cv={manifest['cv_log_loss']:.4f}" if manifest["cv_log_loss"] is not None else "", f"{ref}/v{version}"]
    message = message or " ".join(p for p in parts if p)
    answer = calling_kaggle(lambda: _quietly(lambda: api.competition_submit_code(
        SUBMISSION_FILE, message, spec.slug, kernel=ref, kernel_version=version, quiet=True)), spec.slug, "submit to")
    submitted = int(getattr(answer, "ref", 0) or 0)
    log.info("submitted notebook %s v%d to %s as submission %d: %s", ref, version, spec.slug, submitted,
             getattr(answer, "message", "") or "accepted")
    record(None, message, f"{ref}/v{version}", submitted)
    scored = record(wait_for_score(spec.slug, submitted, wait, poll), message, f"{ref}/v{version}", submitted)
    log.info("public leaderboard %s; recorded in %s", scored.get("lb_public"), RECORD)
    if manifest["experiment"]:
        save_experiment(manifest["experiment"])
    return scored
