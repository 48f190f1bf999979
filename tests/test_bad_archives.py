"""Untrusted archives: escaping or linking members, zip bombs, truncated or fake zips are refused whole.

Each case goes through the download stage (``data.source: local`` pointing at the
archive): one line naming the archive and the problem, exit 2, no competition
folder and nothing extracted anywhere.
"""
from __future__ import annotations

import stat
import sys
import zipfile
from pathlib import Path

import pytest

from pipeline.data.competitions import STATE_FARM
from pipeline.paths import raw_dir
from tests.conftest import run, set_params


def _bundle(tiny_competition: Path, path: Path, extra=None, inner_extra=None) -> Path:
    """Kaggle's State Farm bundle (imgs.zip nested), plus one planted member in it or in imgs.zip."""
    with zipfile.ZipFile(path, "w") as bundle:
        for name in ("driver_imgs_list.csv", "sample_submission.csv"):
            bundle.write(tiny_competition / name, name)
        if inner_extra is None:
            bundle.write(tiny_competition / "imgs.zip", "imgs.zip")
        else:
            inner = path.with_name("imgs.zip")
            with zipfile.ZipFile(tiny_competition / "imgs.zip") as good, zipfile.ZipFile(inner, "w") as bad:
                for name in good.namelist():
                    bad.writestr(name, good.read(name))
                bad.writestr(*inner_extra)
            bundle.write(inner, "imgs.zip")
        if extra is not None:
            bundle.writestr(*extra)
    return path


def _symlink(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.fixture
def refused(repo_copy, run_stage):
    """The download stage's one-line refusal of an archive; asserts nothing was extracted or left behind."""

    def refused_(source: Path, subprocess_: bool = False, **data) -> str:
        set_params(repo_copy, data={"source": "local", "local_path": str(source), **data})
        if subprocess_:
            result = run([sys.executable, "-m", "pipeline.stages.download"], repo_copy, check=False)
            status, lines = result.returncode, result.stderr.strip().splitlines()
        else:
            status, lines = run_stage(repo_copy, "download")
        assert status == 2 and len(lines) == 1, lines
        assert not (repo_copy / raw_dir(STATE_FARM.slug)).exists()
        assert list((repo_copy / "data" / "raw").iterdir()) == []  # no temporary folder left either
        return lines[0]

    return refused_


@pytest.mark.parametrize("where", ["bundle", "imgs.zip"])
@pytest.mark.parametrize("name", ["../evil.jpg", "train/../../evil.jpg", "/tmp/evil.jpg", "C:/evil.jpg"])
def test_members_that_would_escape_are_refused(refused, tiny_competition, tmp_path, where, name):
    member = (name, b"owned")
    bundle = _bundle(tiny_competition, tmp_path / "bundle.zip", **{"extra" if where == "bundle" else "inner_extra": member})
    error = refused(bundle)
    assert f"member {name!r} would escape the target folder" in error
    assert not list(tmp_path.parent.rglob("evil.jpg")) and not Path("/tmp/evil.jpg").exists()


def test_symlink_members_are_refused(refused, tiny_competition, tmp_path):
    bundle = _bundle(tiny_competition, tmp_path / "bundle.zip", inner_extra=(_symlink("train/c0/img_0.jpg"),
                                                                            "/etc/passwd"))
    assert "member 'train/c0/img_0.jpg' is a symbolic link; refusing the archive" in refused(bundle)


def test_symlinks_in_an_unzipped_folder_are_refused(refused, tiny_competition, tmp_path):
    folder = tmp_path / "unzipped"
    folder.mkdir()
    for name in ("driver_imgs_list.csv", "sample_submission.csv", "imgs.zip"):
        (folder / name).write_bytes((tiny_competition / name).read_bytes())
    (folder / "secrets.csv").symlink_to("/etc/passwd")
    assert "secrets.csv: is a symbolic link" in refused(folder)


def test_an_archive_that_would_unpack_past_the_limit_is_refused(refused, tiny_competition, tmp_path):
    bundle = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bundle, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("padding.bin", b"\0" * 5_000_000)  # deflates to a few kB
        for name in ("driver_imgs_list.csv", "sample_submission.csv", "imgs.zip"):
            archive.write(tiny_competition / name, name)
    assert bundle.stat().st_size < 200_000
    error = refused(bundle, max_unpacked_bytes=4_000_000)
    assert "bomb.zip: would unpack to" in error and "over data.max_unpacked_bytes=4,000,000" in error


@pytest.mark.parametrize("damage", ["truncated", "not a zip", "empty"])
def test_a_broken_zip_is_one_line(refused, tiny_competition, tmp_path, damage):
    bundle = _bundle(tiny_competition, tmp_path / "bundle.zip")
    data = bundle.read_bytes()
    bundle.write_bytes({"truncated": data[: len(data) // 2], "not a zip": b"<html>Sign in</html>", "empty": b""}[damage])
    # One case through the command line itself (the others call the stage in this process).
    assert "bundle.zip: not a readable zip archive" in refused(bundle, subprocess_=damage == "truncated")
