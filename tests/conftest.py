"""Shared fixtures: a tiny stand-in competition and a throw-away copy of the repository."""
from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os

# pyproject runs the suite on two xdist workers, one per core; a second torch thread in each worker
# (and in the stages they start, which inherit this) would only contend for the same two cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pipeline.offline  # noqa: F401,E402  (the tests are processes of the project too: nothing calls out)

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from pipeline.config import StandinParams
from pipeline.data.competitions import DOGS_VS_CATS, STATE_FARM, load_spec
from pipeline.data.frames import write_meta
from pipeline.data.raw_data import every_image
from pipeline.data.standin import write_standin
from pipeline.data.tables import RunImages
from pipeline.paths import frames_dir, raw_dir, sample_dir
from pipeline.stages.frames import decode_frames

REPO = Path(__file__).resolve().parents[1]
REPO_FILES = ["pipeline", "competitions", "submissions/README.md", "params.yaml", "dvc.yaml", "pyproject.toml", ".dvcignore", ".gitignore", ".dvc/config", "bench/gpu_costs.csv",
              ".dvc/.gitignore", "metrics/leaderboard"]  # the leaderboard's files as a fresh clone has them: empty
# `dvc exp run` commits; a fresh CI machine has no git identity of its own.
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "pipeline-tests", "GIT_AUTHOR_EMAIL": "tests@pipeline.local",
                "GIT_COMMITTER_NAME": "pipeline-tests", "GIT_COMMITTER_EMAIL": "tests@pipeline.local"}
TINY_STANDIN = dict(seed=7, train_drivers=5, test_drivers=2, frames_per_class=2, width=64, height=48,
                    jpeg_quality=80, public_fraction=0.31)
TINY_FINETUNE = dict(folds=[0, 1, 2], workers=0, test_views=["full"], defaults={"batch_size": 16},
                     models={"net": {"backbone": "tf_efficientnet_lite0", "image_size": 32, "epochs": 1}})
TINY_FEATURES = dict(backbones={"tf_efficientnet_lite0": {"image_size": 64}}, batch_size=64, workers=0)


def run(args: list[str], cwd: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command with this interpreter's environment first on PATH (DVC stages call `python`)."""
    full_env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                "PYTHONPATH": str(cwd), **GIT_IDENTITY, **(env or {})}
    result = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


# A test that needs a throw-away repository or runs a stage is end to end: `slow` (pytest -m "not slow" skips it).
SLOW_FIXTURES = {"repo_copy", "run_stage", "tiny_competition", "tiny_dogs_vs_cats"}


# The files that take longest (each minutes of a 2-core machine), run first: with `--dist loadfile` a worker takes
# a whole file, and a long one taken last keeps one worker busy while the other has nothing left (~1 minute).
# Measured alone on 2 cores (seconds of a worker): 160, 125, 100, 85, 75, 55, 45, 30, 25, 20, 20.
LONGEST_FIRST = ["test_dvc_pipeline.py", "test_gpu_check.py", "test_kaggle_training.py", "test_slurm.py",
                 "test_parallel.py", "test_competitions.py", "test_described_competitions.py", "test_interruption.py",
                 "test_offline.py", "test_determinism.py", "test_finetune.py"]


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.slow)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's own order kept


def run_stage_in(repo: Path, stage: str, *args: str) -> tuple[int, list[str]]:
    """Run a stage's ``main`` in this process, as ``python -m pipeline.stages.<stage> <args>`` in ``repo`` would:
    returns (exit status, stderr lines). Seconds cheaper than a subprocess, which imports torch afresh (torch and
    its compiler alone take ~4 s of a 2-core machine); each test module keeps a subprocess run to prove the command
    line itself. Module-scoped fixtures call it directly; tests use the ``run_stage`` fixture."""
    stderr = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(stderr):
        patch.chdir(repo)
        patch.setattr(sys, "argv", [f"pipeline/stages/{stage}.py", *args])
        patch.setattr(logging.root, "handlers", [])  # the stage's logging goes to ``stderr``
        try:
            importlib.import_module(f"pipeline.stages.{stage}").main()
            status = 0
        except SystemExit as exit_:
            status = exit_.code
    return status, stderr.getvalue().strip().splitlines()


# Every stage of a two-fold run, in dvc.yaml's order: what `dvc repro` would run, each in this process.
TWO_FOLD_STAGES = [("download",), ("sample",), ("frames",), ("features", "tf_efficientnet_lite0"), ("folds",),
                   ("heads", "tf_efficientnet_lite0"), ("finetune", "net", "--fold", "0"),
                   ("finetune", "net", "--fold", "1"), ("ensemble",), ("submission",)]


def run_two_folds_in(repo: Path) -> None:
    """Every stage of ``repo``'s two-fold run in this process (``run_stage_in``), in order; stops at a failure."""
    for stage in TWO_FOLD_STAGES:
        status, lines = run_stage_in(repo, *stage)
        assert status == 0, (stage, lines[-5:])


@pytest.fixture
def run_stage():
    """``run_stage_in`` (a stage in this process) for a test."""
    return run_stage_in


def _tiny_standin(tmp_path_factory, spec) -> Path:
    out = tmp_path_factory.mktemp(spec.slug[:8]) / spec.slug
    out.mkdir()
    write_standin(out, spec, StandinParams(**TINY_STANDIN), workers=1)
    return out


@pytest.fixture(scope="session")
def tiny_competition(tmp_path_factory) -> Path:
    """A tiny stand-in State Farm folder: 5 train drivers, 2 test drivers, 64x48 frames."""
    return _tiny_standin(tmp_path_factory, STATE_FARM)


@pytest.fixture(scope="session")
def tiny_dogs_vs_cats(tmp_path_factory) -> Path:
    """A tiny Dogs vs. Cats Redux stand-in: train.zip, test.zip, sample_submission.csv, solution.csv."""
    return _tiny_standin(tmp_path_factory, DOGS_VS_CATS)


def _merged(old, new):
    """``new`` over ``old``, mappings merged key by key at every depth (lists and values replaced)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return {**old, **{key: _merged(old.get(key), value) for key, value in new.items()}}
    return new


def set_params(repo: Path, **sections) -> None:
    """Change params.yaml in ``repo``: ``set_params(repo, folds={"n_splits": 3})`` changes one key of a section."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump(_merged(params, sections), sort_keys=False))


@pytest.fixture
def repo_copy(tmp_path) -> Path:
    """The pipeline's files in a fresh git repo with one commit, sized tiny; DVC needs the commit."""
    return make_repo(tmp_path / "repo")


def make_repo(repo: Path) -> Path:
    """Build ``repo_copy``'s throw-away repository at ``repo`` (module-scoped fixtures call this directly)."""
    repo.mkdir()
    for name in REPO_FILES:
        source, target = REPO / name, repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    set_params(repo, standin=TINY_STANDIN, folds={"n_splits": 3}, features=TINY_FEATURES,
               finetune=TINY_FINETUNE)
    for command in (["git", "init", "-q"], ["git", "add", "-A"],
                    ["git", "commit", "-qm", "init"]):
        run(command, repo)
    return repo


def put_competition(repo: Path, source: Path, slug: str = STATE_FARM.slug, frames: bool = True) -> Path:
    """Copy a competition folder to where the download stage would have put it in ``repo``, list all its
    images as the sample stage does with ``data.sample: 1``, and (``frames``) decode them as the frames stage
    does."""
    target = repo / raw_dir(slug)
    shutil.copytree(source, target)
    (repo / sample_dir(slug)).mkdir(parents=True)
    images = every_image(target, load_spec(slug, target))
    images.write(repo / sample_dir(slug))
    if frames:
        write_frames(images, slug, repo / frames_dir(slug))
    return target


def write_frames(images: RunImages, slug: str, folder: Path) -> Path:
    """What the frames stage writes for ``images``, decoded in this process (frames.size 224)."""
    folder.mkdir(parents=True)
    write_meta(folder, decode_frames(images, load_spec(slug, images.raw), 224, 1, folder))
    return folder


def replace_member(archive: Path, member: str, data: bytes) -> None:
    """Rewrite one member of a zip in place (to plant a broken image)."""
    with zipfile.ZipFile(archive) as old:
        members = {name: old.read(name) for name in old.namelist()}
    members[member] = data
    with zipfile.ZipFile(archive, "w") as new:
        for name, content in members.items():
            new.writestr(name, content)


def pytest_runtest_logreport(report):
    """With PIPELINE_TRACEBACKS=<file> (bench/gpu_check.sh), each failure's traceback is appended the moment it
    fails, so a run cut off by its time limit still says why what failed failed. Under xdist the controller writes
    (it receives every worker's reports), not the workers."""
    path = os.environ.get("PIPELINE_TRACEBACKS")
    if path and report.failed and not os.environ.get("PYTEST_XDIST_WORKER"):
        with open(path, "a") as file:
            file.write(f"=== {report.nodeid} ({report.when})\n{report.longreprtext}\n\n")


# What a run costs on this machine (pipeline/training/costs.py): its calibration kept, its timing of nets and decoding
# given figures of the right order for a 2-core CPU, so that a test that estimates a run (`train send`,
# `pipeline.plan`) times no net. tests/test_plan.py times a tiny net with the real functions.
CALIBRATED = {"forward": 0.02, "train": 0.06, "flops": 1e9, "decode": 0.004, "md5": 5e8, "head": 3e-5,
              "pair": 4e-8}


@pytest.fixture(autouse=True, scope="session")
def calibrated_costs(tmp_path_factory):
    from unittest import mock

    from pipeline.training import costs

    cache = tmp_path_factory.mktemp("costs") / "costs.json"
    given = costs.ImageCost(CALIBRATED["forward"], CALIBRATED["train"], CALIBRATED["flops"])
    with mock.patch.object(costs, "CACHE", cache), \
            mock.patch.object(costs, "time_net", lambda backbone, size, batch=costs.BATCH: given), \
            mock.patch.object(costs, "time_decode", lambda size: (CALIBRATED["decode"], 1.0)), \
            mock.patch.object(costs, "time_md5", lambda: (CALIBRATED["md5"], 1.0)), \
            mock.patch.object(costs, "time_head", lambda backbone, hidden, batch: (CALIBRATED["head"], 1.0)), \
            mock.patch.object(costs, "time_neighbours", lambda backbone, regions: (CALIBRATED["pair"], 1.0)):
        yield cache
