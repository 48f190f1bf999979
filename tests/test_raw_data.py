"""Whatever form the user's copy takes, it lands in one layout and is checked image for image."""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from pipeline.data.competitions import STATE_FARM
from pipeline.data.raw_data import check_competition_files, ingest
from pipeline.paths import raw_dir
from tests.conftest import set_params

LIMIT = 10**9


def check(folder: Path) -> dict[str, int]:
    return check_competition_files(folder, STATE_FARM, LIMIT)


def bundle_like_kaggle(competition: Path, path: Path, loose_images: bool, zipped_csvs: bool = False) -> Path:
    """A competition zip in the shapes Kaggle has served: nested imgs.zip or loose imgs/ folders."""
    with zipfile.ZipFile(path, "w") as bundle:
        for csv in ("driver_imgs_list.csv", "sample_submission.csv"):
            if zipped_csvs:
                inner = path.parent / f"{csv}.zip"
                with zipfile.ZipFile(inner, "w") as z:
                    z.write(competition / csv, csv)
                bundle.write(inner, f"{csv}.zip")
            else:
                bundle.write(competition / csv, csv)
        if loose_images:
            with zipfile.ZipFile(competition / "imgs.zip") as images:
                for name in images.namelist():
                    bundle.writestr(f"imgs/{name}", images.read(name))
        else:
            bundle.write(competition / "imgs.zip", "imgs.zip")
    return path


def unzipped_like_kaggle(competition: Path, folder: Path, under_imgs: bool = True) -> Path:
    """The competition unzipped: as Kaggle mounts it under /kaggle/input (``imgs/train/...``), or with the images'
    folders at the top (``train/...``), as a user may unzip it."""
    folder.mkdir()
    for csv in ("driver_imgs_list.csv", "sample_submission.csv"):
        shutil.copy(competition / csv, folder)
    with zipfile.ZipFile(competition / "imgs.zip") as images:
        images.extractall(folder / "imgs" if under_imgs else folder)
    return folder


def _ingested(source: Path, out: Path) -> dict[str, str]:
    out.mkdir()
    ingest(source, out, STATE_FARM, LIMIT)
    assert check(out) == check(source if source.is_dir() and (source / "imgs.zip").is_file() else out)
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())}


SOURCES = {"nested zip (Kaggle's bundle)": lambda c, t: bundle_like_kaggle(c, t / "bundle.zip", loose_images=False),
           "flat zip": lambda c, t: bundle_like_kaggle(c, t / "bundle.zip", loose_images=True),
           "zipped CSVs": lambda c, t: bundle_like_kaggle(c, t / "bundle.zip", False, zipped_csvs=True),
           "unzipped (Kaggle's mount)": lambda c, t: unzipped_like_kaggle(c, t / "mount"),
           "unzipped, images at the top": lambda c, t: unzipped_like_kaggle(c, t / "mine", under_imgs=False)}


@pytest.mark.parametrize("form", SOURCES)
def test_every_form_of_the_same_files_ingests_to_the_same_bytes(tiny_competition, tmp_path, form):
    # data/raw/<competition> is a function of the files, not of how they came: a run trained on Kaggle (its mount)
    # is imported where the files came as Kaggle's bundle only if both sides hash the same
    reference = _ingested(tiny_competition, tmp_path / "from imgs.zip beside the CSVs")
    del reference["solution.csv"]  # the stand-in's hidden labels: Kaggle's files have none
    assert _ingested(SOURCES[form](tiny_competition, tmp_path), tmp_path / "out") == reference


def test_an_unzipped_folder_is_packed_into_one_archive(tiny_competition, tmp_path):
    folder = tmp_path / "unzipped"
    folder.mkdir()
    for csv in ("driver_imgs_list.csv", "sample_submission.csv"):
        shutil.copy(tiny_competition / csv, folder)
    with zipfile.ZipFile(tiny_competition / "imgs.zip") as images:
        images.extractall(folder)
    out = tmp_path / "out"
    out.mkdir()
    ingest(folder, out, STATE_FARM, LIMIT)
    assert sorted(p.name for p in out.iterdir()) == ["driver_imgs_list.csv", "imgs.zip", "sample_submission.csv"]
    assert check(out) == check(tiny_competition)


def test_a_local_copy_with_other_counts_is_one_warning_and_the_download_goes_on(repo_copy, tiny_competition,
                                                                                 run_stage):
    set_params(repo_copy, data={"source": "local", "local_path": str(tiny_competition)})
    status, lines = run_stage(repo_copy, "download")
    assert status == 0
    [warning] = [line for line in lines if line.startswith("warning:")]
    counts = check(tiny_competition)
    assert warning == (f"warning: {tiny_competition}: found {counts['train']} train and {counts['test']} test "
                       f"images; Kaggle serves 22424 and 79726; going on with the images you have")
    assert (repo_copy / raw_dir(STATE_FARM.slug) / "imgs.zip").is_file()


def _solution_edit(folder: Path, edit) -> None:
    path = folder / "solution.csv"
    edit(pd.read_csv(path, dtype=str)).to_csv(path, index=False)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.iloc[1:], "solution.csv: lists img_"),
    (lambda t: t.assign(classname="c42"), "solution.csv: row 2: unknown class 'c42' in classname"),
    (lambda t: t.assign(Usage="Hidden"), "solution.csv: row 2: Usage 'Hidden'; expected Public or Private"),
    (lambda t: t.drop(columns="classname"), "solution.csv: columns ['img', 'subject', 'Usage']; expected 'img' and "
                                            "'classname' (class names) or one 0/1 column per class ('c0', 'c1', "),
])
def test_the_users_hidden_labels_are_checked_like_every_other_file(repo_copy, tiny_competition, tmp_path, run_stage,
                                                                   edit, message):
    folder = tmp_path / "mine"
    shutil.copytree(tiny_competition, folder)
    _solution_edit(folder, edit)
    set_params(repo_copy, data={"source": "local", "local_path": str(folder)})
    status, lines = run_stage(repo_copy, "download")
    assert status == 2 and message in lines[-1] and str(folder) in lines[-1], lines


def test_a_local_subset_with_its_own_hidden_labels_runs_to_a_scored_submission(repo_copy, tiny_competition, tmp_path,
                                                                                run_stage):
    folder = tmp_path / "my-drivers"
    shutil.copytree(tiny_competition, folder)  # what a competitor who kept drivers aside would have: solution.csv too
    set_params(repo_copy, data={"source": "local", "local_path": str(folder)},
               ensemble={"models": ["heads-tf_efficientnet_lite0"]})
    for stage in (["download"], ["sample"], ["frames"], ["features", "tf_efficientnet_lite0"], ["folds"],
                  ["heads", "tf_efficientnet_lite0"], ["ensemble"], ["submission"]):
        status, lines = run_stage(repo_copy, *stage)
        assert status == 0, (stage, lines)
    assert (repo_copy / raw_dir(STATE_FARM.slug) / "solution.csv").read_bytes() == \
        (folder / "solution.csv").read_bytes()
    metrics = json.loads((repo_copy / "metrics" / "submission" / "metrics.json").read_text())
    assert metrics["file"] and {"public_log_loss", "private_log_loss"} <= set(metrics)
    assert 0 < metrics["private_log_loss"] < math.log(10)  # better than chance, 10 classes
