"""The stand-in has exactly State Farm's files and layout, keeps test drivers unseen, and is deterministic."""
from __future__ import annotations

import io
import zipfile

import pandas as pd
from PIL import Image

from pipeline.config import StandinParams
from pipeline.data.competitions import STATE_FARM
from pipeline.data.standin import render_workers, write_standin
from tests.conftest import TINY_STANDIN


def test_files_and_columns_are_those_kaggle_serves(tiny_competition):
    assert sorted(p.name for p in tiny_competition.iterdir()) == [
        "driver_imgs_list.csv", "imgs.zip", "sample_submission.csv", "solution.csv"]
    labels = pd.read_csv(tiny_competition / "driver_imgs_list.csv")
    assert list(labels.columns) == ["subject", "classname", "img"]
    sample = pd.read_csv(tiny_competition / "sample_submission.csv")
    assert list(sample.columns) == ["img"] + [f"c{i}" for i in range(10)]
    solution = pd.read_csv(tiny_competition / "solution.csv")
    assert list(solution.columns) == ["img", "classname", "subject", "Usage"]
    assert set(solution.Usage) == {"Public", "Private"}


def test_archive_holds_train_class_folders_and_flat_test_matching_the_csvs(tiny_competition):
    labels = pd.read_csv(tiny_competition / "driver_imgs_list.csv")
    sample = pd.read_csv(tiny_competition / "sample_submission.csv")
    with zipfile.ZipFile(tiny_competition / "imgs.zip") as archive:
        names = set(archive.namelist())
        first = Image.open(io.BytesIO(archive.read(sorted(names)[0])))
    assert names == {f"train/{c}/{i}" for c, i in zip(labels.classname, labels.img)} | {f"test/{i}" for i in sample.img}
    assert all(name.split("/")[-1].startswith("img_") and name.endswith(".jpg") for name in names)
    assert (first.format, first.size) == ("JPEG", (TINY_STANDIN["width"], TINY_STANDIN["height"]))


def test_counts_follow_params_and_test_drivers_never_appear_in_train(tiny_competition):
    labels = pd.read_csv(tiny_competition / "driver_imgs_list.csv")
    solution = pd.read_csv(tiny_competition / "solution.csv")
    p = TINY_STANDIN
    assert labels.subject.nunique() == p["train_drivers"]
    assert solution.subject.nunique() == p["test_drivers"]
    assert set(labels.subject).isdisjoint(solution.subject)
    assert (labels.groupby(["subject", "classname"]).size() == p["frames_per_class"]).all()
    assert sorted(labels.classname.unique()) == list(STATE_FARM.classes)


def test_same_seed_gives_byte_identical_files_whatever_the_worker_count(tiny_competition, tmp_path):
    write_standin(tmp_path, STATE_FARM, StandinParams(**TINY_STANDIN), workers=2)
    for path in tiny_competition.iterdir():
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name


def test_a_tiny_stand_in_is_drawn_in_one_process_and_a_full_count_one_on_every_core():
    assert render_workers(140, 64 * 48, cores=2) == 1  # the suite's stand-in: spawning would cost more than drawing
    assert render_workers(102_150, 640 * 480, cores=16) == 16  # State Farm's full count
    assert render_workers(2_000, 320 * 240, cores=2) == 2


def test_another_seed_gives_other_drivers_and_images(tiny_competition, tmp_path):
    write_standin(tmp_path, STATE_FARM, StandinParams(**{**TINY_STANDIN, "seed": 8}), workers=1)
    other = pd.read_csv(tmp_path / "driver_imgs_list.csv")
    original = pd.read_csv(tiny_competition / "driver_imgs_list.csv")
    assert set(other.subject) != set(original.subject)
    assert (tmp_path / "imgs.zip").read_bytes() != (tiny_competition / "imgs.zip").read_bytes()


def test_drivers_look_different_and_frames_of_one_driver_and_class_are_near_duplicates(tiny_competition):
    import numpy as np

    labels = pd.read_csv(tiny_competition / "driver_imgs_list.csv")
    with zipfile.ZipFile(tiny_competition / "imgs.zip") as archive:
        def pixels(row):
            return np.asarray(Image.open(io.BytesIO(archive.read(f"train/{row.classname}/{row.img}"))), dtype=float)

        c0 = labels[labels.classname == "c0"]
        first_driver, second_driver = c0.subject.unique()[:2]
        a, b = [pixels(r) for r in c0[c0.subject == first_driver].itertuples()][:2]
        other = pixels(next(c0[c0.subject == second_driver].itertuples()))
    assert np.abs(a - b).mean() < np.abs(a - other).mean() / 2
