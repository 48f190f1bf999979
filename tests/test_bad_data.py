"""Bad competition data stops the stage that meets it with one line naming the file, and nothing is written.

Files that disagree (CSV against archive, sample submission against test
images, columns, duplicates, unknown classes) are caught by the download
stage before ``data/raw/<competition>/`` exists; a failed re-download leaves
the previous folder untouched. Images that do not decode are caught by the
first stage that reads pixels (features), naming ``imgs.zip:<member>``.
"""
from __future__ import annotations

import io
import shutil
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from pipeline.data.competitions import STATE_FARM
from pipeline.paths import frames_dir, raw_dir
from tests.conftest import put_competition, replace_member, run, set_params

BACKBONE = "tf_efficientnet_lite0"


def _rewrite_archive(folder: Path, edit) -> None:
    with zipfile.ZipFile(folder / "imgs.zip") as old:
        members = {name: old.read(name) for name in old.namelist()}
    edit(members)
    with zipfile.ZipFile(folder / "imgs.zip", "w") as new:
        for name, data in members.items():
            new.writestr(name, data)


def _first_train_member(folder: Path) -> str:
    with zipfile.ZipFile(folder / "imgs.zip") as archive:
        return sorted(n for n in archive.namelist() if n.startswith("train/"))[0]


def _edit_csv(path: Path, edit) -> None:
    edit(pd.read_csv(path)).to_csv(path, index=False)


LABELS, SAMPLE = "driver_imgs_list.csv", "sample_submission.csv"
DAMAGE = {
    "no image archive": (lambda f: (f / "imgs.zip").unlink(), "no imgs.zip and no train/ images found"),
    "renamed labels column": (lambda f: _edit_csv(f / LABELS, lambda t: t.rename(columns={"subject": "driver"})),
                              rf"{LABELS}: missing column(s) ['subject']"),
    "labels column missing": (lambda f: _edit_csv(f / LABELS, lambda t: t.drop(columns="classname")),
                              rf"{LABELS}: missing column(s) ['classname']"),
    "train image not in the CSV": (lambda f: _edit_csv(f / LABELS, lambda t: t.iloc[1:]),
                                   f"{LABELS}: does not list img_"),
    "CSV row without an image": (lambda f: _rewrite_archive(f, lambda m: m.pop(_first_train_member(f))),
                                 f"{LABELS}: lists img_"),
    "unknown class folder": (lambda f: _rewrite_archive(f, lambda m: m.update({"train/c10/img_0.jpg": b"x"})),
                             "imgs.zip: unexpected member 'train/c10/img_0.jpg'"),
    "unknown class in the CSV": (lambda f: _edit_csv(f / LABELS, lambda t: t.assign(classname=t.classname.where(
        t.index > 0, "c11"))), f"{LABELS}: row 2: unknown class 'c11'"),
    "image listed twice": (lambda f: _edit_csv(f / LABELS, lambda t: pd.concat([t, t.iloc[:1]])),
                           "is listed more than once"),
    "image in two class folders": (lambda f: _rewrite_archive(f, lambda m: m.update(
        {_first_train_member(f).replace("/c0/", "/c1/"): b"x"})), "appears in two class folders"),
    "test image not in the sample submission": (lambda f: _edit_csv(f / SAMPLE, lambda t: t.iloc[1:]),
                                                f"{SAMPLE}: does not list img_"),
    "sample submission column renamed": (lambda f: _edit_csv(f / SAMPLE, lambda t: t.rename(columns={"c3": "c03"})),
                                         rf"{SAMPLE}: missing column(s) ['c3']"),
    "sample submission not a CSV": (lambda f: (f / SAMPLE).write_bytes(b"\x00\xff\xfe binary"),
                                    f"{SAMPLE}: not a readable CSV"),
    "empty folder": (lambda f: [p.unlink() for p in f.iterdir()], "no sample_submission.csv found"),
}


def _damaged_copy(tiny_competition: Path, folder: Path, case: str) -> str:
    """A copy of the competition with one kind of damage; the message that must name it."""
    damage, message = DAMAGE[case]
    shutil.copytree(tiny_competition, folder)
    damage(folder)
    return message


def _assert_names_the_users_file(status: int, lines: list[str], message: str, folder: Path, repo: Path) -> None:
    assert status == 2 and len(lines) == 1, lines
    assert message in lines[0] and str(folder) in lines[0], lines[0]
    assert ".tmp-" not in lines[0]  # named as the user knows it, not by the folder it was checked in
    assert list((repo / "data" / "raw").iterdir()) == []


@pytest.mark.parametrize("case", list(DAMAGE))
def test_inconsistent_files_stop_the_download_with_one_line_naming_the_file(repo_copy, tiny_competition, tmp_path,
                                                                             run_stage, case):
    folder = tmp_path / "mine"
    message = _damaged_copy(tiny_competition, folder, case)
    set_params(repo_copy, data={"source": "local", "local_path": str(folder)})
    _assert_names_the_users_file(*run_stage(repo_copy, "download"), message, folder, repo_copy)


def test_the_download_command_itself_exits_2_with_the_one_line(repo_copy, tiny_competition, tmp_path):
    folder = tmp_path / "mine"
    message = _damaged_copy(tiny_competition, folder, "train image not in the CSV")
    set_params(repo_copy, data={"source": "local", "local_path": str(folder)})
    result = run([sys.executable, "-m", "pipeline.stages.download"], repo_copy, check=False)
    _assert_names_the_users_file(result.returncode, result.stderr.strip().splitlines(), message, folder, repo_copy)


def test_a_failed_download_leaves_the_previous_competition_folder_as_it_was(repo_copy, tiny_competition, tmp_path,
                                                                            run_stage):
    assert run_stage(repo_copy, "download")[0] == 0  # the stand-in
    raw = repo_copy / raw_dir(STATE_FARM.slug)
    before = {p.name: p.read_bytes() for p in raw.iterdir()}
    folder = tmp_path / "mine"
    _damaged_copy(tiny_competition, folder, "train image not in the CSV")
    set_params(repo_copy, data={"source": "local", "local_path": str(folder)})
    assert run_stage(repo_copy, "download")[0] == 2
    assert {p.name: p.read_bytes() for p in raw.iterdir()} == before


def _gif() -> bytes:
    gif = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(gif, "GIF")
    return gif.getvalue()


@pytest.mark.parametrize("damage, message", [
    ("truncated", "truncated JPEG (it stops before its end-of-image marker)"),
    ("corrupt", "broken JPEG (no valid marker at byte 2)"),
    ("zero bytes", "not an image file (unknown or broken header)"),
    ("GIF named .jpg", "is GIF; the pipeline reads JPEG, PNG, WebP, BMP and TIFF"),
])
def test_an_image_that_does_not_decode_stops_the_frames_stage_naming_it(repo_copy, tiny_competition, run_stage,
                                                                        damage, message):
    raw = put_competition(repo_copy, tiny_competition, frames=False)
    member = _first_train_member(raw)
    with zipfile.ZipFile(raw / "imgs.zip") as archive:
        good = archive.read(member)
    broken = {"truncated": good[: len(good) // 2], "corrupt": b"\xff\xd8\xff" + bytes(200), "zero bytes": b"",
              "GIF named .jpg": _gif()}[damage]
    replace_member(raw / "imgs.zip", member, broken)
    set_params(repo_copy, frames={"workers": 2})  # the decoding processes of a machine with cores to spare
    status, lines = run_stage(repo_copy, "frames")
    assert status == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: data/raw/{STATE_FARM.slug}/imgs.zip:{member}: ") and message in lines[0]
    folder = repo_copy / frames_dir(STATE_FARM.slug)
    assert not folder.exists() and list(folder.parent.iterdir()) == []
