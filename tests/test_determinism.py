"""The same params give the same bytes on CPU: stand-in, folds, cached features, head predictions, metrics.

GPU runs are not bit-for-bit reproducible (README, "Determinism"); these tests pin the CPU path,
which is what CI and the default `dvc repro` run on.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from pipeline.paths import features_dir, folds_csv, metrics_dir, predictions_dir
from tests.conftest import make_repo, put_competition, run, run_stage_in, set_params

pytestmark = pytest.mark.slow  # end to end: stages as subprocesses

SLUG = "state-farm-distracted-driver-detection"
BACKBONE = "tf_efficientnet_lite0"
STAGES = (["folds"], ["features", BACKBONE], ["heads", BACKBONE])


def _outputs(repo: Path) -> dict[str, bytes]:
    folders = [features_dir(SLUG, BACKBONE), predictions_dir(SLUG, f"heads-{BACKBONE}")]
    files = {str(folds_csv(SLUG)): (repo / folds_csv(SLUG)).read_bytes(),
             "heads metrics.json": (repo / metrics_dir(f"heads-{BACKBONE}") / "metrics.json").read_bytes()}
    for folder in folders:
        for path in sorted((repo / folder).rglob("*")):
            if path.is_file():
                files[str(path.relative_to(repo))] = path.read_bytes()
    return files


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_competition) -> tuple[dict, dict, Path]:
    """The folds, features and heads stages run twice from scratch, in two repositories: as commands, then in this
    process (another interpreter, another hash seed, the threads and caches of the tests before)."""
    results = []
    for name in ("first", "second"):
        repo = make_repo(tmp_path_factory.mktemp(name) / "repo")
        put_competition(repo, tiny_competition)
        set_params(repo, features={"train_passes": 1}, heads={"epochs": 5})
        for stage in STAGES:
            if name == "first":
                run([sys.executable, "-m", f"pipeline.stages.{stage[0]}", *stage[1:]], repo)
            else:
                status, lines = run_stage_in(repo, *stage)
                assert status == 0, lines
        results.append((_outputs(repo), repo))
    return results[0][0], results[1][0], results[1][1]


def test_folds_features_predictions_and_metrics_are_byte_identical(two_runs):
    first, second, _ = two_runs
    assert first.keys() == second.keys()
    assert any(name.endswith("train_aug.npy") for name in first)  # augmented passes included
    different = [name for name in first if first[name] != second[name]]
    assert different == []


def test_another_seed_changes_the_folds_and_so_everything_after_them(two_runs, tmp_path):
    first, _, repo = two_runs
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy, symlinks=True)
    set_params(copy, folds={"seed": 1})
    for stage in (["folds"], ["heads", BACKBONE]):
        assert run_stage_in(copy, *stage)[0] == 0
    changed = _outputs(copy)
    assert changed[str(folds_csv(SLUG))] != first[str(folds_csv(SLUG))]
    assert changed["heads metrics.json"] != first["heads metrics.json"]
