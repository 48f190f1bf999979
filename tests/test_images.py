"""One reader serves a zip or a folder by member name (unsafe archives: tests/test_bad_archives.py)."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest

from pipeline.data.images import ImageArchive
from pipeline.errors import PipelineError


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


def test_the_content_decides_the_format_and_a_broken_image_names_its_member(tmp_path):
    from io import BytesIO

    from PIL import Image

    png, gif = BytesIO(), BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 30)).save(png, "PNG")
    Image.new("RGB", (8, 8)).save(gif, "GIF")
    path = tmp_path / "imgs.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("test/img_1.jpg", png.getvalue())
        archive.writestr("test/img_2.jpg", b"\xff\xd8\xff garbage")
        archive.writestr("test/img_3.jpg", gif.getvalue())
    archive = ImageArchive(path)
    assert (archive.load_rgb("test/img_1.jpg") == (200, 10, 30)).all()  # a PNG named .jpg is still a PNG
    with pytest.raises(PipelineError, match="imgs.zip:test/img_2.jpg: broken JPEG"):
        archive.load_rgb("test/img_2.jpg")
    with pytest.raises(PipelineError, match="imgs.zip:test/img_3.jpg: is GIF; the pipeline reads JPEG, PNG"):
        archive.load_rgb("test/img_3.jpg")
