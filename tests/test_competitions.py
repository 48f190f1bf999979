"""Beyond State Farm: Dogs vs. Cats Redux and the user's own folders run through every stage unchanged."""
from __future__ import annotations

import json
import math
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.config import load_params
from pipeline.data.competitions import DOGS_VS_CATS, OWN_DATA, augment_of, finetune_views, load_spec
from pipeline.data.metrics import binary_log_loss, competition_metric, multiclass_log_loss
from pipeline.data.raw_data import check_competition_files, ingest, train_table
from pipeline.data.solution import solution_labels
from pipeline.ensemble.submission_format import score
from pipeline.errors import PipelineError
from pipeline.paths import folds_csv, raw_dir
from pipeline.stages.folds import make_folds
from tests.conftest import run, run_two_folds_in, set_params

DVC = [sys.executable, "-m", "dvc"]
LIMIT = 10**9


def _exp_metrics(repo: Path) -> dict:
    table = json.loads(run(DVC + ["exp", "show", "--json"], repo).stdout)
    [exp] = [e for commit in table for e in (commit.get("experiments") or [])]
    return {path: m["data"] for path, m in exp["revs"][0]["data"]["metrics"].items()}


def test_dogs_vs_cats_layout_is_kaggles(tiny_dogs_vs_cats):
    assert sorted(p.name for p in tiny_dogs_vs_cats.iterdir()) == ["sample_submission.csv", "solution.csv",
                                                                   "test.zip", "train.zip"]
    with zipfile.ZipFile(tiny_dogs_vs_cats / "train.zip") as train, zipfile.ZipFile(tiny_dogs_vs_cats / "test.zip") as test:
        train_names, test_names = train.namelist(), test.namelist()
        sizes = {Image.open(train.open(n)).size for n in train_names}
    assert all(n.startswith(("train/cat.", "train/dog.")) and n.endswith(".jpg") for n in train_names)
    sample = pd.read_csv(tiny_dogs_vs_cats / "sample_submission.csv")
    assert list(sample.columns) == ["id", "label"] and list(sample.id) == list(range(1, len(test_names) + 1))
    assert sorted(test_names) == sorted(f"test/{i}.jpg" for i in sample.id)
    assert len(sizes) > 1  # Kaggle's photos come in every size
    counts = check_competition_files(tiny_dogs_vs_cats, DOGS_VS_CATS, LIMIT)
    assert counts == {"train": len(train_names), "test": len(test_names)}


def test_dogs_vs_cats_labels_come_from_file_names_and_folds_are_stratified(tiny_dogs_vs_cats):
    table = train_table(tiny_dogs_vs_cats, DOGS_VS_CATS)
    assert (table.label == table.img.str.split(".").str[0]).all() and (table.group == "").all()
    folds = make_folds(table, DOGS_VS_CATS, n_splits=3, seed=0)
    per_fold = folds.groupby(["fold", "label"]).size().unstack()
    assert (per_fold.max() - per_fold.min() <= 1).all()  # stratified: each fold has its share of cats and dogs
    with pytest.raises(PipelineError, match="smallest class has"):
        make_folds(table, DOGS_VS_CATS, n_splits=50, seed=0)


def test_dogs_vs_cats_folds_keep_a_users_groups_together(tiny_dogs_vs_cats, repo_copy, tmp_path):
    # Kaggle gives no pet ids, but a competitor may cluster near-duplicate photos and group by cluster.
    images = train_table(tiny_dogs_vs_cats, DOGS_VS_CATS).img
    groups = pd.DataFrame({"img": images, "cluster": [f"k{i % 4}" for i in range(len(images))]})
    groups.to_csv(tmp_path / "clusters.csv", index=False)
    set_params(repo_copy, competition=DOGS_VS_CATS.slug,
               data={"groups_csv": str(tmp_path / "clusters.csv"), "group_column": "cluster"})  # the stand-in
    for stage in ("download", "sample", "folds"):
        run([sys.executable, "-m", f"pipeline.stages.{stage}"], repo_copy)
    folds = pd.read_csv(repo_copy / folds_csv(DOGS_VS_CATS.slug))
    assert folds.group.nunique() == 4 and (folds.groupby("group").fold.nunique() == 1).all()

    copied = (repo_copy / raw_dir(DOGS_VS_CATS.slug) / "groups.csv").read_bytes()
    groups.iloc[1:].to_csv(tmp_path / "clusters.csv", index=False)  # one photo without a cluster
    result = run([sys.executable, "-m", "pipeline.stages.download"], repo_copy, check=False)
    assert result.returncode == 2 and f"clusters.csv: does not list {images.iloc[0]}" in result.stderr
    assert (repo_copy / raw_dir(DOGS_VS_CATS.slug) / "groups.csv").read_bytes() == copied  # the last good download


@pytest.mark.parametrize("shape", ["kaggle_bundle", "unzipped_folder"])
def test_dogs_vs_cats_ingests_from_the_bundle_or_an_unzipped_folder(tiny_dogs_vs_cats, tmp_path, shape):
    if shape == "kaggle_bundle":
        source = tmp_path / f"{DOGS_VS_CATS.slug}.zip"
        with zipfile.ZipFile(source, "w") as bundle:
            for name in ("train.zip", "test.zip", "sample_submission.csv"):
                bundle.write(tiny_dogs_vs_cats / name, name)
    else:
        source = tmp_path / "unzipped"
        source.mkdir()
        (source / "sample_submission.csv").write_bytes((tiny_dogs_vs_cats / "sample_submission.csv").read_bytes())
        for name in ("train.zip", "test.zip"):
            with zipfile.ZipFile(tiny_dogs_vs_cats / name) as archive:
                archive.extractall(source)
    out = tmp_path / "out"
    out.mkdir()
    ingest(source, out, DOGS_VS_CATS, LIMIT)
    assert sorted(p.name for p in out.iterdir()) == ["sample_submission.csv", "test.zip", "train.zip"]
    assert check_competition_files(out, DOGS_VS_CATS, LIMIT) == \
        check_competition_files(tiny_dogs_vs_cats, DOGS_VS_CATS, LIMIT)


def test_binary_log_loss_is_kaggles_and_agrees_with_two_column_log_loss():
    p_dog = np.array([0.9, 0.2, 0.5, 1.0])
    is_dog = np.array([1, 0, 1, 0])
    expected = -(math.log(0.9) + math.log(0.8) + math.log(0.5) + math.log(1 - (1 - 1e-15))) / 4  # clipped like Kaggle
    assert binary_log_loss(is_dog, p_dog) == pytest.approx(expected)
    both = np.stack([1 - p_dog, p_dog], 1)
    assert competition_metric(DOGS_VS_CATS, is_dog, both) == pytest.approx(expected)
    # Away from the clip, the multi-class loss on [P(cat), P(dog)] is the same number: heads and blends can use it.
    assert multiclass_log_loss(is_dog[:3], both[:3]) == pytest.approx(binary_log_loss(is_dog[:3], p_dog[:3]))


def test_a_dogs_vs_cats_submission_is_scored_on_p_dog():
    submission = pd.DataFrame({"id": ["1", "2", "3"], "label": [0.9, 0.3, 0.6]})
    # Kaggle's solution in the submission's own column: 1 for a dog, 0 for a cat
    solution = pd.DataFrame({"id": [1, 2, 3], "label": [1, 0, 0], "Usage": ["Public", "Private", "Private"]})
    scores = score(submission, solution_labels(solution, DOGS_VS_CATS), DOGS_VS_CATS)
    assert scores["public_log_loss"] == pytest.approx(-math.log(0.9))
    assert scores["private_log_loss"] == pytest.approx(-(math.log(0.7) + math.log(0.4)) / 2)


def test_dvc_exp_run_on_dogs_vs_cats_writes_an_id_label_submission_with_cv_metrics(repo_copy):
    # Mirroring is fine for cats and dogs: the flip view and flip augmentation are allowed here.
    # Six photos per pet rather than the tiny stand-in's two: 20 photos left CV at chance's door (0.69-0.71).
    set_params(repo_copy, augment={"hflip": True}, features={"test_views": ["full", "hflip"]},
               finetune={"test_views": ["full", "hflip"], "folds": [0, 1]}, folds={"n_splits": 2},
               standin={"frames_per_class": 6})
    run(["git", "commit", "-qam", "flip for dogs vs cats, two folds"], repo_copy)
    run(DVC + ["exp", "run", "-S", f"competition={DOGS_VS_CATS.slug}", "-n", "dogs"], repo_copy)
    raw = repo_copy / raw_dir(DOGS_VS_CATS.slug)
    assert (raw / "train.zip").is_file() and (raw / "test.zip").is_file()
    submission = pd.read_csv(repo_copy / "submissions" / "latest.csv")
    sample = pd.read_csv(raw / "sample_submission.csv")
    assert list(submission.columns) == ["id", "label"] and list(submission.id) == list(sample.id)
    assert submission.label.between(0, 1).all() and submission.label.std() > 0
    metrics = _exp_metrics(repo_copy)
    assert {"cv_log_loss", "public_log_loss", "private_log_loss"} <= set(metrics["metrics/submission/metrics.json"])
    # Better than chance by a margin a broken model (labels shuffled, features of the wrong image) would not reach.
    assert metrics["metrics/ensemble/metrics.json"]["cv_log_loss"] < 0.9 * math.log(2)
    folds = pd.read_csv(repo_copy / folds_csv(DOGS_VS_CATS.slug))
    # No groups of its own: near-duplicate photos (the same pet) were grouped, and no group straddles two folds.
    assert folds.group.notna().all() and (folds.groupby("group").fold.nunique() == 1).all()
    assert folds.fold.nunique() == 2


def test_own_data_runs_every_stage_and_groups_folds_by_the_users_column(repo_copy):
    # Every stage in this process (Dogs vs. Cats above proves the command line, `dvc exp run`, on a second
    # competition): the same stages, a torch import each fewer.
    set_params(repo_copy, competition=OWN_DATA.slug, folds={"n_splits": 2}, finetune={"folds": [0, 1]})
    run_two_folds_in(repo_copy)
    raw = repo_copy / raw_dir(OWN_DATA.slug)
    assert sorted(p.name for p in raw.iterdir()) == ["groups.csv", "images.zip", "labels.csv",
                                                     "sample_submission.csv", "solution.csv"]
    classes = list(pd.read_csv(raw / "sample_submission.csv").columns[1:])
    assert classes == ["drinking", "phone", "radio", "safe"]
    submission = pd.read_csv(repo_copy / "submissions" / "latest.csv")
    assert list(submission.columns) == ["id", *classes]
    assert np.allclose(submission[classes].sum(axis=1), 1, atol=1e-4)
    folds = pd.read_csv(repo_copy / folds_csv(OWN_DATA.slug))
    assert (folds.groupby("group").fold.nunique() == 1).all()
    assert "cv_log_loss" in json.loads((repo_copy / "metrics" / "submission" / "metrics.json").read_text())


def _jpeg(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), colour).save(path, "JPEG")


def _user_folders(root: Path, with_test: bool = True) -> dict:
    """A user's data as folders look: two class folders of 6 images named alike (0.jpg ... 5.jpg in each), the
    files Windows and macOS leave, a groups CSV (3 people), optionally a test folder; returns the params sections
    that point at it."""
    rows = []
    for k, label in enumerate(("closed", "open")):
        for i in range(6):
            _jpeg(root / "train" / label / f"{i}.jpg", (40 + 150 * k, 60 + 10 * i, 90))
            rows.append((f"{label}/{i}.jpg", f"person{i % 3}"))
    pd.DataFrame(rows, columns=["img", "person"]).to_csv(root / "groups.csv", index=False)
    (root / "train" / "open" / ".DS_Store").write_bytes(b"finder")
    (root / "train" / "closed" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0 windows thumbnails")
    if with_test:
        for i in range(4):
            _jpeg(root / "test" / f"t{i}.jpg", (50 + 40 * i, 70, 90))
        (root / "test" / "desktop.ini").write_text("[.ShellClassInfo]")
    return {"own_data": {"train_dir": str(root / "train"), "test_dir": str(root / "test") if with_test else ""},
            "data": {"source": "local", "groups_csv": str(root / "groups.csv"), "group_column": "person"}}


def test_own_folders_land_in_one_zip_with_labels_groups_and_a_sample_submission(repo_copy, tmp_path):
    set_params(repo_copy, competition=OWN_DATA.slug, **_user_folders(tmp_path / "mine"))
    result = run([sys.executable, "-m", "pipeline.stages.download"], repo_copy)
    assert "own_data.train_dir: skipped 2 file(s) the operating system left (.DS_Store, Thumbs.db)" in result.stderr
    assert "own_data.test_dir: skipped 1 file(s) the operating system left (desktop.ini)" in result.stderr
    raw = repo_copy / raw_dir(OWN_DATA.slug)
    labels = pd.read_csv(raw / "labels.csv")
    assert list(labels.columns) == ["img", "label"] and len(labels) == 12 and set(labels.label) == {"closed", "open"}
    # Ids are paths under train_dir: 0.jpg of each class folder is an image of its own.
    assert sorted(labels.img) == sorted(f"{label}/{i}.jpg" for label in ("closed", "open") for i in range(6))
    assert (labels.img.str.split("/").str[0] == labels.label).all()
    groups = pd.read_csv(raw / "groups.csv")
    assert list(groups.columns) == ["img", "group"] and sorted(groups.img) == sorted(labels.img)
    assert groups.group.nunique() == 3
    sample = pd.read_csv(raw / "sample_submission.csv")
    assert list(sample.columns) == ["id", "closed", "open"] and list(sample.id) == [f"t{i}.jpg" for i in range(4)]
    spec = load_spec(OWN_DATA.slug, raw)
    assert check_competition_files(raw, spec, LIMIT) == {"train": 12, "test": 4}


@pytest.mark.parametrize("damage, message", [
    (lambda root: (root / "train" / "open" / "notes.txt").write_text("x"), "notes.txt: not an image file"),
    (lambda root: pd.read_csv(root / "groups.csv").iloc[1:].to_csv(root / "groups.csv", index=False),
     "groups.csv: does not list closed/0.jpg (own data's ids are paths under own_data.train_dir: <class>/<file>)"),
    (lambda root: _jpeg(root / "train" / "open" / "deeper" / "x.jpg", (1, 2, 3)),
     "expected <class>/<image> directly under own_data.train_dir"),
])
def test_bad_own_folders_stop_the_download_with_one_line_and_write_nothing(repo_copy, tmp_path, run_stage, damage,
                                                                          message):
    settings = _user_folders(tmp_path / "mine")
    damage(tmp_path / "mine")
    set_params(repo_copy, competition=OWN_DATA.slug, **settings)
    status, lines = run_stage(repo_copy, "download")
    assert status == 2 and len(lines) == 1 and message in lines[0], lines
    assert not (repo_copy / raw_dir(OWN_DATA.slug)).exists()


def test_own_data_without_a_test_folder_reports_cv_and_writes_no_submission(repo_copy, tmp_path, run_stage):
    set_params(repo_copy, competition=OWN_DATA.slug, **_user_folders(tmp_path / "mine", with_test=False),
               folds={"n_splits": 3},
               ensemble={"models": ["heads-tf_efficientnet_lite0"]})
    for stage in (["download"], ["sample"], ["frames"], ["features", "tf_efficientnet_lite0"], ["folds"],
                  ["heads", "tf_efficientnet_lite0"], ["ensemble"], ["submission"]):
        assert run_stage(repo_copy, *stage)[0] == 0, stage
    metrics = json.loads((repo_copy / "metrics" / "submission" / "metrics.json").read_text())
    # The two classes are a dark and a light red: a working model is nearly sure of each, chance is log 2.
    assert metrics["file"] == "" and metrics["cv_log_loss"] < 0.5 * math.log(2)
    assert not list((repo_copy / "submissions").glob("*.csv"))


def test_hflip_auto_mirrors_where_the_description_is_flip_safe_and_leaves_state_farm_as_it_was():
    params = load_params()  # the default: augment.hflip: auto
    assert params.augment.hflip == "auto"
    state_farm = load_spec("state-farm-distracted-driver-detection")
    assert augment_of(params, state_farm).hflip is False
    assert augment_of(params, state_farm).model_dump() == {**params.augment.model_dump(), "hflip": False}
    assert finetune_views(params, state_farm) == list(params.finetune.test_views)  # no mirrored view: as before
    assert augment_of(params, DOGS_VS_CATS).hflip is True
    assert finetune_views(params, DOGS_VS_CATS) == [*params.finetune.test_views, "hflip"]
    off = params.model_copy(update={"augment": params.augment.model_copy(update={"hflip": False})})
    assert augment_of(off, DOGS_VS_CATS).hflip is False and "hflip" not in finetune_views(off, DOGS_VS_CATS)
