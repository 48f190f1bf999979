"""`dvc repro` end to end on a tiny stand-in, in a throw-away git repo."""
from __future__ import annotations

import json
import shlex
import sys

import pandas as pd
from dvc.repo import Repo

from pipeline.competitions import STATE_FARM
from pipeline.paths import folds_csv, raw_dir
from tests.conftest import run, set_params
from tests.test_dvc_graph import imported_files

DVC = [sys.executable, "-m", "dvc"]


def test_repro_builds_every_stage_then_has_nothing_to_do_and_an_experiment_reruns_what_dropout_reaches(repo_copy):
    set_params(repo_copy, folds={"n_splits": 2}, finetune={"folds": [0, 1]})  # two folds: the suite stays fast
    run(["git", "commit", "-qam", "two folds"], repo_copy)
    first = run(DVC + ["repro"], repo_copy)
    assert "Running stage 'download'" in first.stdout and "Running stage 'folds'" in first.stdout
    raw = repo_copy / raw_dir(STATE_FARM.slug)
    assert (raw / "imgs.zip").is_file() and (raw / "driver_imgs_list.csv").is_file()
    folds = pd.read_csv(repo_copy / folds_csv(STATE_FARM.slug))
    assert folds.fold.nunique() == 2 and (folds.groupby("group").fold.nunique() == 1).all()
    submission = pd.read_csv(repo_copy / "submissions" / "latest.csv")
    assert list(submission.columns) == ["img", *STATE_FARM.classes]
    assert len(list((repo_copy / "submissions").glob(f"{STATE_FARM.slug}-*.csv"))) == 1
    shown = json.loads(run(DVC + ["metrics", "show", "--json"], repo_copy).stdout)
    metrics = {path: m["data"] for path, m in next(iter(shown.values()))["data"].items()}
    assert {"cv_log_loss", "private_log_loss", "public_log_loss"} <= set(metrics["metrics/submission/metrics.json"])
    assert "random_split_cv_log_loss" in metrics["metrics/heads-tf_efficientnet_lite0/metrics.json"]
    plots = run(DVC + ["plots", "show", "--json"], repo_copy).stdout
    assert "oof_confusion.json" in plots

    second = run(DVC + ["repro"], repo_copy)
    assert "Running stage" not in second.stdout
    status = run(DVC + ["status"], repo_copy)
    assert "up to date" in status.stdout

    # An edit to a shared module makes exactly the stages that import it (directly or not) out of date.
    images = repo_copy / "pipeline" / "images.py"
    original = images.read_text()
    images.write_text(original + "\n# an edit\n")
    stale = set(json.loads(run(DVC + ["status", "--json"], repo_copy).stdout))
    images.write_text(original)
    with Repo(str(repo_copy)) as repo:
        modules = {stage.name: shlex.split(stage.cmd)[2] for stage in repo.index.stages}
    assert stale == {name for name, module in modules.items() if "pipeline/images.py" in imported_files(module)}
    assert "submission" not in stale and "finetune@lite0-0" in stale

    # The usual next step: an experiment on the top-level dropout reuses the cached data and features.
    experiment = run(DVC + ["exp", "run", "-S", "dropout=0.3", "-n", "drop03"], repo_copy)
    assert "Running stage 'heads@tf_efficientnet_lite0'" in experiment.stdout
    assert "Running stage 'finetune@lite0-0'" in experiment.stdout
    assert "Running stage 'features@" not in experiment.stdout and "Running stage 'folds'" not in experiment.stdout
    table = json.loads(run(DVC + ["exp", "show", "--json"], repo_copy).stdout)
    experiments = [exp for commit in table for exp in (commit.get("experiments") or [])]
    runs = [run_["data"] for exp in experiments for run_ in exp["revs"]]
    [ours] = [r for r in runs if r["params"]["params.yaml"]["data"]["dropout"] == 0.3]
    assert "cv_log_loss" in ours["metrics"]["metrics/submission/metrics.json"]["data"]
    [baseline] = [commit for commit in table if commit["rev"] != "workspace"]
    assert baseline["data"]["params"]["params.yaml"]["data"]["dropout"] == 0.5


def test_changing_a_folds_param_reruns_only_the_folds_stage(repo_copy):
    run(DVC + ["repro", "folds"], repo_copy)
    set_params(repo_copy, folds={"n_splits": 2}, finetune={"folds": [0, 1]})
    again = run(DVC + ["repro", "folds"], repo_copy)
    assert "Running stage 'folds'" in again.stdout and "Running stage 'download'" not in again.stdout
    assert pd.read_csv(repo_copy / folds_csv(STATE_FARM.slug)).fold.nunique() == 2


def test_a_bad_param_fails_dvc_repro_with_the_one_line_error(repo_copy):
    set_params(repo_copy, folds={"n_splits": 9})
    result = run(DVC + ["repro"], repo_copy, check=False)
    assert result.returncode != 0
    assert "error: params.yaml: folds.n_splits: 9 folds need at least 9 distinct subject values" in result.stderr
    assert not (repo_copy / folds_csv(STATE_FARM.slug)).exists()


def test_adding_a_backbone_runs_only_its_features_stage(repo_copy):
    run(DVC + ["repro", "features"], repo_copy)
    backbones = {"tf_efficientnet_lite0": {"image_size": 64}, "resnet9000": {"image_size": 64}}
    set_params(repo_copy, features={"backbones": backbones})
    again = run(DVC + ["repro", "features"], repo_copy, check=False)
    assert "Running stage 'features@tf_efficientnet_lite0'" not in again.stdout
    assert "Running stage 'features@resnet9000'" in again.stdout
    assert "error: params.yaml: features.backbones.resnet9000: timm has no model 'resnet9000'" in again.stderr


def test_adding_a_model_runs_only_its_finetune_stages(repo_copy):
    set_params(repo_copy, finetune={"folds": [0]})  # one fold is enough to see which stages run
    first = run(DVC + ["repro", "finetune"], repo_copy)
    assert "Running stage 'finetune@lite0-0'" in first.stdout
    set_params(repo_copy, finetune={"models": {"small": {"backbone": "tf_efficientnet_lite0", "image_size": 32,
                                                         "epochs": 1, "augment_strength": 0.5}}})
    again = run(DVC + ["repro", "finetune"], repo_copy)
    assert "Running stage 'finetune@small-0'" in again.stdout
    assert "Running stage 'finetune@lite0-0'" not in again.stdout and "Running stage 'features" not in again.stdout
    assert (repo_copy / "data" / "predictions" / STATE_FARM.slug / "finetune-small" / "fold0" / "test.csv").is_file()
