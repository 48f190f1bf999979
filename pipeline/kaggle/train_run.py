"""A run trained on Kaggle's GPUs, as both sides know it: the plan ``send`` saved (``.kaggle-train/<run>/plan.json``;
``train-run.json`` in the dataset is its copy), the run's params laid over params.yaml the same way here and on Kaggle,
and the git and DVC calls both make. ``python -m pipeline.kernel train send|status|collect`` (docs/kernel.md):
pipeline/kaggle/send.py uploads the commit and pushes pipeline/kaggle/notebook.py, which trains there;
pipeline/kaggle/collect.py takes the output back as a checked DVC experiment.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.errors import PipelineError

RUNS = Path(".kaggle-train")
RUN_FILE = "train-run.json"
BUNDLE = "repo.bundle"
PROGRESS = "trained.json"  # in the session's output: the stages finished so far, the machine, the versions
# Run on this machine, never brought back: the frame cache is too large for Kaggle's output (20 GB) and is decoded
# again here, and its hash compared; the stages after the fine-tuned nets run where the user is.
LOCAL_STAGES = ("download", "sample", "frames")
AFTER_TRAINING = ("ensemble", "submission")


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
    resumes: str = ""  # the run whose finished stages this one starts from (send --resume), "" for none
    # the pushed notebook's output of that run, mounted as a kernel source (owner/slug)
    resumes_notebook: str = ""

    @classmethod
    def load(cls, folder: Path) -> "TrainRun":
        return cls(**json.loads((folder / "plan.json").read_text()))

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "plan.json").write_text(self.as_json())

    def as_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


def git(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise PipelineError(f"`git {' '.join(args[:3])}` failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return done.stdout


def dvc(*args: str, cwd: Path | None = None, show=None) -> str:
    """`python -m dvc ...`; a repro's output through ``show`` (a logger's info); its failure as one line."""
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True)
    if show is not None and done.stdout.strip():
        show("%s", done.stdout.rstrip())
    if done.returncode != 0:
        lines = [line for line in (done.stderr.strip() or done.stdout.strip()).splitlines() if line.strip()]
        raise PipelineError(f"`dvc {' '.join(args[:2])}` failed (exit status {done.returncode}): "
                            f"{lines[-1] if lines else '?'}")
    return done.stdout


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


def training_stages(repo: Path) -> list[str]:
    """The stages a Kaggle session trains and brings back, in dvc.yaml's order: all but those made here (the raw
    data, the sample, the frame cache) and those after training (the ensemble, the submission)."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        return [s.addressing for s in dvc_repo.index.stages
                if s.addressing not in AFTER_TRAINING and s.addressing not in LOCAL_STAGES]


def same_entry(ours: dict, theirs: dict) -> bool:
    """Whether two dvc.lock entries of a stage record the same run: every dependency and output by its hash, every
    param by its value."""
    def hashes(entries):
        return {e["path"]: e.get("md5") for e in entries or []}

    return (hashes(ours.get("deps")) == hashes(theirs.get("deps")) and hashes(ours.get("outs")) ==
            hashes(theirs.get("outs")) and ours.get("params") == theirs.get("params"))


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
        sent = ", ".join(p.parent.name for p in RUNS.glob("*/plan.json"))
        raise PipelineError(f"{folder}: no such run; runs: {sent}")
    return folder
