"""A competition is a description in competitions/, not code: seven described beyond State Farm, Dogs vs. Cats and
own data (Aerial Cactus: ROC AUC on one probability column; APTOS 2019: quadratic weighted kappa on a class;
Plant Pathology 2020: mean column-wise ROC AUC on one-hot labels; Histopathologic Cancer Detection's .tif images;
Cassava's accuracy; Plant Seedlings' class folders without a CSV and micro F1; Dog Breed Identification's 120
breeds) run from their stand-ins to a submission in their own format, scored in their own metric, mirrored where
they are flip-safe; a labels CSV given as a local folder is checked row by row; a user's own held-out labels
without Kaggle's Usage column are scored as one set."""
from __future__ import annotations

import json
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from pipeline.config import StandinParams
from pipeline.data.competitions import described, load_spec
from pipeline.data.metrics import METRICS, fit_thresholds
from pipeline.data.raw_data import check_competition_files
from pipeline.data.solution import read_solution
from pipeline.data.standin import write_standin
from pipeline.ensemble.submission_format import validate_submission
from pipeline.errors import PipelineError
from pipeline.paths import raw_dir
from tests.conftest import TINY_STANDIN, run, run_stage_in, run_two_folds_in, set_params

CACTUS, APTOS, PLANTS = ("aerial-cactus-identification", "aptos2019-blindness-detection",
                         "plant-pathology-2020-fgvc7")
HISTOPATHOLOGY, CASSAVA, SEEDLINGS, DOG_BREEDS = ("histopathologic-cancer-detection",
                                                  "cassava-leaf-disease-classification",
                                                  "plant-seedlings-classification", "dog-breed-identification")
# Each stage of a run, in dvc.yaml's order, run in this process (a subprocess each would import torch afresh).
TWO_FOLDS = dict(folds={"n_splits": 2, "group_by": "given"}, finetune={"folds": [0, 1]},
                 standin={"frames_per_class": 4})


def _metrics(repo: Path, name: str) -> dict:
    return json.loads((repo / "metrics" / name / "metrics.json").read_text())


def _check_submission(repo: Path, slug: str) -> pd.DataFrame:
    spec = load_spec(slug)
    raw = repo / raw_dir(slug)
    submission = pd.read_csv(repo / "submissions" / "latest.csv", dtype={spec.submission_id: str})
    sample = pd.read_csv(raw / spec.sample_submission, dtype={spec.submission_id: str})
    validate_submission(submission, sample, spec, "submissions/latest.csv")  # what the submit command checks
    assert list(submission.columns) == list(sample.columns) == list(spec.submission_columns)
    assert list(submission[spec.submission_id]) == list(sample[spec.submission_id])
    return submission


def test_every_description_reads_and_names_a_metric_the_pipeline_has():
    slugs = described()
    assert {CACTUS, APTOS, PLANTS, "state-farm-distracted-driver-detection"} <= set(slugs)
    for slug in slugs:
        assert load_spec(slug).metric in METRICS


# solution.csv's columns as each competition names them: the labels CSV's own label column, the submission's class
# column, a 0/1 column of a one-probability submission, a 0/1 column per class of a one-hot competition.
OWN_SOLUTION_COLUMNS = {CACTUS: lambda spec: ["id", "has_cactus"], APTOS: lambda spec: ["id_code", "diagnosis"],
                        PLANTS: lambda spec: ["image_id", "healthy", "multiple_diseases", "rust", "scab"],
                        HISTOPATHOLOGY: lambda spec: ["id", "label"], CASSAVA: lambda spec: ["image_id", "label"],
                        SEEDLINGS: lambda spec: ["file", "species"], DOG_BREEDS: lambda spec: ["id", "breed"]}


@pytest.mark.parametrize("slug", [CACTUS, APTOS, PLANTS, HISTOPATHOLOGY, CASSAVA, SEEDLINGS, DOG_BREEDS])
def test_the_stand_in_is_drawn_in_the_competitions_own_layout(slug, tmp_path):
    spec = load_spec(slug)
    write_standin(tmp_path, spec, StandinParams(**{**TINY_STANDIN, "frames_per_class": 1}), workers=1)
    sample = pd.read_csv(tmp_path / spec.sample_submission, dtype=str)
    assert list(sample.columns) == list(spec.submission_columns)
    with zipfile.ZipFile(tmp_path / spec.train_archive) as archive:
        names = set(archive.namelist())
    # The hidden labels in the competition's own columns, as Kaggle publishes a solution
    solution = pd.read_csv(tmp_path / spec.solution_csv, dtype=str)
    assert list(solution.columns) == [*OWN_SOLUTION_COLUMNS[slug](spec), "Usage"]
    if spec.labels_from == "class_folders":  # Plant Seedlings: no CSV, a folder per class, named as the classes
        assert not spec.labels_csv and {n.split("/")[1] for n in names} == set(spec.classes)
        return
    labels = pd.read_csv(tmp_path / spec.labels_csv, dtype=str)
    # The CSV names flat images of one folder: the id plus the competition's suffix (.png for APTOS' fundus photos)
    assert {spec.train_member(i) for i in labels[spec.id_column]} <= names
    assert all(n.count("/") == 1 for n in names)
    if spec.labels_from == "one_hot":
        assert list(labels.columns) == [spec.id_column, *spec.classes]
        assert (labels[list(spec.classes)].astype(int).sum(axis=1) == 1).all()
    else:
        assert set(labels[spec.label_column]) <= set(spec.classes)


def test_aptos_gives_cv_kappa_and_a_class_per_image_cut_at_thresholds_fit_out_of_fold(repo_copy):
    set_params(repo_copy, competition=APTOS, **TWO_FOLDS)
    run_two_folds_in(repo_copy)
    ensemble = _metrics(repo_copy, "ensemble")
    assert ensemble["metric"] == "quadratic_weighted_kappa (higher is better)"
    assert -1 <= ensemble["cv_kappa"] <= 1 and "cv_log_loss" not in ensemble
    submission = _check_submission(repo_copy, APTOS)
    assert set(submission.diagnosis.astype(str)) <= {"0", "1", "2", "3", "4"}
    blend = json.loads((repo_copy / "data" / "ensemble" / APTOS / "blend.json").read_text())
    assert len(blend["thresholds"]) == 4 and blend["thresholds"] == sorted(blend["thresholds"])
    scored = _metrics(repo_copy, "submission")
    assert {"cv_kappa", "public_kappa", "private_kappa", "leaderboard_kappa"} <= set(scored)


def test_aerial_cactus_from_an_unzipped_local_folder_gives_cv_auc_and_a_probability_column(repo_copy, tmp_path):
    # Real images in a CSV layout, as a user who unzipped Kaggle's files has them: no Python edited.
    spec = load_spec(CACTUS)
    drawn, local = tmp_path / "drawn", tmp_path / "cactus files"
    drawn.mkdir()
    write_standin(drawn, spec, StandinParams(**{**TINY_STANDIN, "frames_per_class": 4}), workers=1)
    local.mkdir()
    for archive in spec.archives:
        with zipfile.ZipFile(drawn / archive) as z:
            z.extractall(local)
    for name in (spec.labels_csv, spec.sample_submission, spec.solution_csv):
        shutil.copy(drawn / name, local / name)
    set_params(repo_copy, competition=CACTUS, data={"source": "local", "local_path": str(local)}, **TWO_FOLDS)
    run_two_folds_in(repo_copy)
    ensemble = _metrics(repo_copy, "ensemble")
    assert ensemble["metric"] == "roc_auc (higher is better)" and 0 <= ensemble["cv_roc_auc"] <= 1
    submission = _check_submission(repo_copy, CACTUS)
    assert submission.has_cactus.between(0, 1).all() and submission.has_cactus.std() > 0
    assert {"public_roc_auc", "private_roc_auc"} <= set(_metrics(repo_copy, "submission"))


def test_plant_pathology_gives_cv_mean_column_auc_and_a_probability_per_class(repo_copy):
    set_params(repo_copy, competition=PLANTS, **TWO_FOLDS)
    run_two_folds_in(repo_copy)
    ensemble = _metrics(repo_copy, "ensemble")
    assert ensemble["metric"] == "mean_column_auc (higher is better)" and 0 <= ensemble["cv_mean_column_auc"] <= 1
    submission = _check_submission(repo_copy, PLANTS)
    classes = list(load_spec(PLANTS).classes)
    assert np.allclose(submission[classes].sum(axis=1), 1, atol=1e-4)
    # scored against the stand-in's one-hot solution (image_id, a 0/1 column per class), as Kaggle publishes it
    scored = _metrics(repo_copy, "submission")
    assert 0 <= scored["public_mean_column_auc"] <= 1 and 0 <= scored["private_mean_column_auc"] <= 1


# Each newer description on its stand-in: (slug, the ensemble's metric key, the stand-in's frames per class; Dog Breed
# Identification's 120 breeds get one, or the tiny stand-in would hold 3,360 images).
NEWER = [(HISTOPATHOLOGY, "roc_auc", 4), (CASSAVA, "accuracy", 4), (SEEDLINGS, "micro_f1", 4),
         (DOG_BREEDS, "log_loss", 1)]


@pytest.mark.parametrize("slug, key, frames_per_class", NEWER, ids=[n[0] for n in NEWER])
def test_a_newer_description_runs_its_stand_in_to_a_submission_in_its_own_format_flipped_as_it_allows(
        repo_copy, slug, key, frames_per_class):
    spec = load_spec(slug)
    set_params(repo_copy, competition=slug, **{**TWO_FOLDS, "standin": {"frames_per_class": frames_per_class}})
    run_two_folds_in(repo_copy)
    ensemble = _metrics(repo_copy, "ensemble")
    assert ensemble["metric"].startswith(spec.metric) and f"cv_{key}" in ensemble
    submission = _check_submission(repo_copy, slug)
    if spec.submission_values == "class":  # Plant Seedlings: file,species with the folders' names, spaces kept
        assert set(submission[spec.submission_column].astype(str)) <= set(spec.classes)
    assert {f"public_{key}", f"private_{key}"} <= set(_metrics(repo_copy, "submission"))
    # augment.hflip: auto, and every one of them is flip-safe: the nets trained on mirrors and predicted the mirror
    fold = _metrics(repo_copy, "finetune-net-fold0")
    assert fold["hflip"] is True
    config = torch.load(repo_copy / "models" / slug / "finetune-net" / "fold0" / "final.pt", weights_only=True)["config"]
    assert config["augment"]["hflip"] is True


def test_held_out_labels_without_a_usage_column_are_scored_as_one_set_and_other_usages_refused_naming_the_row(
        repo_copy, tmp_path):
    # A user's own held-out images: an id and a label, no public/private split of Kaggle's
    set_params(repo_copy, competition=CASSAVA, **TWO_FOLDS)
    run_two_folds_in(repo_copy)
    raw = repo_copy / raw_dir(CASSAVA)
    solution = pd.read_csv(raw / "solution.csv", dtype=str)
    solution.drop(columns="Usage").to_csv(raw / "solution.csv", index=False)
    status, lines = run_stage_in(repo_copy, "submission")
    assert status == 0
    scored = _metrics(repo_copy, "submission")
    assert scored["solution_parts"] == "one set"
    assert scored["public_accuracy"] == scored["private_accuracy"] == scored["leaderboard_accuracy"]
    assert any("has no Usage column: its labels are scored as one set" in line for line in lines)
    # Kaggle's column with a value of neither part: refused at the download, naming the row (line 5: header + 3)
    local = tmp_path / "cassava files"
    shutil.copytree(raw, local)
    solution.loc[3, "Usage"] = "Hidden"
    solution.to_csv(local / "solution.csv", index=False)
    shutil.rmtree(raw)
    set_params(repo_copy, data={"source": "local", "local_path": str(local)})
    result = run([sys.executable, "-m", "pipeline.stages.download"], repo_copy, check=False)
    assert result.returncode == 2
    [error] = result.stderr.strip().splitlines()
    assert error.endswith("solution.csv: row 5: Usage 'Hidden'; expected Public or Private (or no Usage column: the "
                          "labels are then scored as one set)")
    assert not raw.exists()  # nothing half-written


@pytest.fixture
def cactus_folder(tmp_path) -> Path:
    """Aerial Cactus' files unzipped: train/ and test/ of flat images, train.csv, sample_submission.csv."""
    spec, drawn, local = load_spec(CACTUS), tmp_path / "drawn", tmp_path / "cactus"
    drawn.mkdir()
    local.mkdir()
    write_standin(drawn, spec, StandinParams(**TINY_STANDIN), workers=1)
    for archive in spec.archives:
        with zipfile.ZipFile(drawn / archive) as z:
            z.extractall(local)
    for name in (spec.labels_csv, spec.sample_submission):
        shutil.copy(drawn / name, local / name)
    return local


def _damage_missing(labels: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([labels, pd.DataFrame({"id": ["feedfacecafe.jpg"], "has_cactus": [1]})], ignore_index=True)


def _damage_unknown_class(labels: pd.DataFrame) -> pd.DataFrame:
    labels.loc[2, "has_cactus"] = 7
    return labels


def _damage_duplicate(labels: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([labels, labels.iloc[[0]]], ignore_index=True)


@pytest.mark.parametrize("damage, line", [
    (_damage_missing, "row {n}: id 'feedfacecafe.jpg' has no image train/feedfacecafe.jpg"),
    (_damage_unknown_class, "row 4: unknown class '7' in has_cactus; expected one of ['0', '1']"),
    (_damage_duplicate, "row {n}: id '{first}' is listed more than once"),
])
def test_a_labels_csv_naming_a_missing_image_an_unknown_class_or_a_duplicate_id_is_refused_naming_the_row(
        repo_copy, cactus_folder, damage, line):
    labels = pd.read_csv(cactus_folder / "train.csv")
    first = labels.id.iloc[0]
    damaged = damage(labels)
    damaged.to_csv(cactus_folder / "train.csv", index=False)
    set_params(repo_copy, competition=CACTUS, data={"source": "local", "local_path": str(cactus_folder)})
    result = run([sys.executable, "-m", "pipeline.stages.download"], repo_copy, check=False)
    assert result.returncode == 2
    [error] = result.stderr.strip().splitlines()
    assert error.startswith("error: ") and "train.csv: " + line.format(n=len(damaged) + 1, first=first) in error
    assert not (repo_copy / raw_dir(CACTUS)).exists()  # nothing half-written


def test_mean_column_auc_and_kappa_are_scikit_learns():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 200)
    proba = rng.dirichlet(np.ones(4), 200)
    proba[np.arange(200), labels] += 0.3
    proba /= proba.sum(1, keepdims=True)
    one_hot = np.eye(4)[labels]
    assert METRICS["mean_column_auc"].score(labels, proba) == pytest.approx(
        roc_auc_score(one_hot, proba, average="macro"))
    assert METRICS["quadratic_weighted_kappa"].score(labels, proba) == pytest.approx(
        cohen_kappa_score(labels, np.searchsorted([0.5, 1.5, 2.5], proba @ np.arange(4), side="right"),
                          weights="quadratic"))
    assert METRICS["roc_auc"].score(labels % 2, proba[:, :2] / proba[:, :2].sum(1, keepdims=True)) == pytest.approx(
        roc_auc_score(labels % 2, proba[:, 1] / proba[:, :2].sum(1)))


def test_kappa_thresholds_fit_out_of_fold_beat_the_halfway_cuts_on_a_model_that_under_grades():
    # A model whose expected grade runs low (mass pulled toward grade 0): cuts at 0.5, 1.5, ... under-grade every
    # image; thresholds fit on other rows of the same model move down and grade them right more often.
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, 600)
    proba = np.full((600, 5), 0.02)
    proba[np.arange(600), labels] = 0.5
    proba[:, 0] += 0.4
    proba /= proba.sum(1, keepdims=True)
    kappa = METRICS["quadratic_weighted_kappa"]
    fit_rows, scored_rows = np.arange(300), np.arange(300, 600)
    thresholds = fit_thresholds(labels[fit_rows], proba[fit_rows])
    assert list(thresholds) == sorted(thresholds)
    halfway = kappa.score(labels[scored_rows], proba[scored_rows])
    fitted = kappa.score(labels[scored_rows], proba[scored_rows], thresholds)
    assert fitted > halfway + 0.05


def _standin(slug: str, folder: Path) -> tuple:
    spec = load_spec(slug)
    folder.mkdir()
    write_standin(folder, spec, StandinParams(**{**TINY_STANDIN, "frames_per_class": 1}), workers=1)
    return spec, pd.read_csv(folder / spec.solution_csv, dtype=str)


def _checked(folder: Path, spec) -> pd.DataFrame:
    check_competition_files(folder, spec, max_unpacked_bytes=10**9)  # what the download stage checks
    return read_solution(folder / spec.solution_csv, spec)


def test_held_out_labels_are_read_in_the_competitions_own_columns_and_any_other_form_refused_naming_them(tmp_path):
    # Plant Seedlings: the submission's file,species, not our word "label"
    spec, solution = _standin(SEEDLINGS, tmp_path / "seedlings")
    assert set(_checked(tmp_path / "seedlings", spec)["label"]) <= set(spec.classes)
    solution.rename(columns={"species": "label"}).to_csv(tmp_path / "seedlings" / "solution.csv", index=False)
    with pytest.raises(PipelineError) as refused:
        _checked(tmp_path / "seedlings", spec)
    assert str(refused.value) == (f"{tmp_path / 'seedlings' / 'solution.csv'}: columns ['file', 'label', 'Usage']; "
                                  f"expected 'file' and 'species' (class names)")
    # Cassava: "label" is the competition's own word, and still read
    spec, solution = _standin(CASSAVA, tmp_path / "cassava")
    assert list(_checked(tmp_path / "cassava", spec)["label"]) == list(solution["label"])
    # Plant Pathology: a 0/1 column per class; a row with two classes is refused naming its line
    spec, solution = _standin(PLANTS, tmp_path / "plants")
    read = _checked(tmp_path / "plants", spec)
    assert [solution.loc[i, c] for i, c in enumerate(read["label"])] == ["1"] * len(read)
    solution.loc[1, "rust"] = solution.loc[1, "scab"] = "1"
    solution.to_csv(tmp_path / "plants" / "solution.csv", index=False)
    with pytest.raises(PipelineError, match=r"solution.csv: row 3: .*; expected one class column at 1 and the others "
                                            r"at 0$"):
        _checked(tmp_path / "plants", spec)


def test_a_probability_per_class_competition_reads_its_solution_one_hot_and_a_positive_one_as_1_and_0(tmp_path):
    spec, solution = _standin("state-farm-distracted-driver-detection", tmp_path / "drivers")
    by_name = _checked(tmp_path / "drivers", spec)
    one_hot = solution[["img"]].join(pd.get_dummies(solution["classname"]).reindex(columns=list(spec.classes),
                                                                                   fill_value=False).astype(int))
    one_hot.assign(Usage=solution["Usage"]).to_csv(tmp_path / "drivers" / "solution.csv", index=False)
    pd.testing.assert_frame_equal(_checked(tmp_path / "drivers", spec), by_name)
    # Dogs vs. Cats: Kaggle's 1 = dog, 0 = cat, and the class names, read alike
    spec, solution = _standin("dogs-vs-cats-redux-kernels-edition", tmp_path / "pets")
    assert set(solution["label"]) == {"0", "1"}
    as_ones = _checked(tmp_path / "pets", spec)
    solution.assign(label=solution["label"].map({"1": "dog", "0": "cat"})).to_csv(tmp_path / "pets" / "solution.csv",
                                                                               index=False)
    pd.testing.assert_frame_equal(_checked(tmp_path / "pets", spec), as_ones)
