"""Whatever form the user's copy takes, it lands in one layout and is checked image for image."""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest

from pipeline.competitions import STATE_FARM
from pipeline.errors import PipelineError
from pipeline.raw_data import check_competition_files, ingest

LIMIT = 10**9


def check(folder: Path) -> dict[str, int]:
    return check_competition_files(folder, STATE_FARM, LIMIT, official_counts=False)


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


@pytest.mark.parametrize("loose_images, zipped_csvs", [(False, False), (True, False), (False, True)])
def test_kaggle_bundle_shapes_all_ingest_to_the_same_checked_layout(tiny_competition, tmp_path, loose_images,
                                                                      zipped_csvs):
    bundle = bundle_like_kaggle(tiny_competition, tmp_path / "bundle.zip", loose_images, zipped_csvs)
    out = tmp_path / "out"
    out.mkdir()
    ingest(bundle, out, STATE_FARM, LIMIT)
    assert check(out) == check(tiny_competition)
    with zipfile.ZipFile(out / "imgs.zip") as a, zipfile.ZipFile(tiny_competition / "imgs.zip") as b:
        assert sorted(a.namelist()) == sorted(b.namelist())


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


def test_the_official_counts_are_checked_for_real_downloads(tiny_competition):
    with pytest.raises(PipelineError, match="has 22424 and 79726"):
        check_competition_files(tiny_competition, STATE_FARM, LIMIT, official_counts=True)
