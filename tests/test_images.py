"""One reader serves a zip or a folder by member name, and refuses archives that escape or link."""
from __future__ import annotations

import os
import stat
import zipfile

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.images import ImageArchive


def test_zip_and_unzipped_folder_give_the_same_members_and_pixels(tiny_competition, tmp_path):
    with zipfile.ZipFile(tiny_competition / "imgs.zip") as archive:
        archive.extractall(tmp_path)
    from_zip, from_folder = ImageArchive(tiny_competition / "imgs.zip"), ImageArchive(tmp_path)
    assert from_zip.names() == from_folder.names()
    name = from_zip.names("test/")[0]
    assert np.array_equal(from_zip.load_rgb(name), from_folder.load_rgb(name))
    assert from_zip.load_rgb(name).shape == (48, 64, 3)


def test_draft_decoding_shrinks_but_never_below_the_requested_size(tiny_competition):
    archive = ImageArchive(tiny_competition / "imgs.zip")
    small = archive.load_rgb(archive.names("train/")[0], draft_size=(20, 20))
    assert small.shape[0] >= 20 and small.shape[1] >= 20 and small.shape[1] < 64


def test_a_pickled_archive_reopens_in_the_worker(tiny_competition):
    import pickle

    archive = ImageArchive(tiny_competition / "imgs.zip")
    archive.read_bytes(archive.names()[0])
    clone = pickle.loads(pickle.dumps(archive))
    assert clone.read_bytes(archive.names()[0]) == archive.read_bytes(archive.names()[0])


@pytest.mark.parametrize("name", ["../evil.jpg", "train/../../evil.jpg", "/etc/evil.jpg", "C:/evil.jpg"])
def test_members_that_escape_the_target_are_refused(tmp_path, name):
    path = tmp_path / "bad.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("train/c0/img_1.jpg", b"x")
        archive.writestr(name, b"x")
    with pytest.raises(PipelineError, match="escape"):
        ImageArchive(path)


def test_symlink_members_are_refused(tmp_path):
    path = tmp_path / "link.zip"
    info = zipfile.ZipInfo("train/c0/img_1.jpg")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(info, "/etc/passwd")
    with pytest.raises(PipelineError, match="symbolic link"):
        ImageArchive(path)


def test_symlinks_in_a_folder_are_refused(tmp_path):
    (tmp_path / "train").mkdir()
    os.symlink("/etc/passwd", tmp_path / "train" / "img_1.jpg")
    with pytest.raises(PipelineError, match="symbolic link"):
        ImageArchive(tmp_path)


def test_archive_that_would_unpack_past_the_limit_is_refused(tmp_path):
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("train/c0/img_1.jpg", b"\0" * 1_000_000)
    with pytest.raises(PipelineError, match="max_unpacked_bytes"):
        ImageArchive(path, max_unpacked_bytes=100_000)


def test_a_file_that_is_not_a_zip_is_one_clear_error(tmp_path):
    path = tmp_path / "imgs.zip"
    path.write_bytes(b"not a zip at all")
    with pytest.raises(PipelineError, match="imgs.zip: not a readable zip"):
        ImageArchive(path)


def test_broken_and_non_jpeg_images_name_the_member(tmp_path):
    from io import BytesIO

    from PIL import Image

    png = BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    path = tmp_path / "imgs.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("test/img_1.jpg", png.getvalue())
        archive.writestr("test/img_2.jpg", b"\xff\xd8\xff garbage")
    archive = ImageArchive(path)
    with pytest.raises(PipelineError, match="img_1.jpg: is PNG, not a JPEG"):
        archive.load_rgb("test/img_1.jpg")
    with pytest.raises(PipelineError, match="img_2.jpg: not a valid JPEG"):
        archive.load_rgb("test/img_2.jpg")
