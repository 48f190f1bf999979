"""Any image a user has: PNG, WebP, BMP, TIFF as well as JPEG; grayscale, palette, 16-bit, CMYK, alpha, EXIF
orientation and phones' motion photos become upright 8-bit RGB; a broken file is refused at download, by its path."""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

from pipeline.data.competitions import OWN_DATA
from pipeline.data.decoding import BACKGROUND, check_image, decode_rgb
from pipeline.errors import PipelineError
from pipeline.paths import raw_dir
from tests.conftest import set_params

RED, BLUE = (220, 20, 30), (20, 40, 230)


def _encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def _two_tone(mode: str = "RGB") -> Image.Image:
    """40x20: left half red, right half blue; orientation and colour are both easy to check."""
    image = Image.new("RGB", (40, 20), RED)
    image.paste(BLUE, (20, 0, 40, 20))
    return image.convert(mode)


@pytest.mark.parametrize("image_format", ["PNG", "WEBP", "BMP", "TIFF", "JPEG"])
def test_every_format_decodes_to_the_same_rgb_picture(image_format):
    options = {"lossless": True} if image_format == "WEBP" else {"quality": 95} if image_format == "JPEG" else {}
    rgb = decode_rgb(_encode(_two_tone(), image_format, **options), "x")
    assert rgb.shape == (20, 40, 3) and rgb.dtype == np.uint8
    tolerance = 12 if image_format == "JPEG" else 0
    assert np.abs(rgb[10, 5].astype(int) - RED).max() <= tolerance
    assert np.abs(rgb[10, 35].astype(int) - BLUE).max() <= tolerance


@pytest.mark.parametrize("mode, image_format", [("L", "PNG"), ("P", "PNG"), ("CMYK", "JPEG"), ("CMYK", "TIFF"),
                                                ("I;16", "PNG"), ("L", "JPEG")])
def test_grayscale_palette_cmyk_and_16_bit_become_8_bit_rgb(mode, image_format):
    source = _two_tone()
    if mode == "I;16":  # 16-bit grayscale: the 8-bit value v is stored as v * 257
        image = Image.fromarray((np.asarray(source.convert("L"), np.uint16) * 257))
    else:
        image = source.convert(mode)
    rgb = decode_rgb(_encode(image, image_format), "x")
    expected = np.asarray(image.convert("RGB") if mode != "I;16" else source.convert("L").convert("RGB"), int)
    assert rgb.shape == (20, 40, 3) and rgb.dtype == np.uint8
    assert np.abs(rgb.astype(int) - expected).max() <= (8 if image_format == "JPEG" else 1)


def test_transparent_pixels_lie_on_a_white_background():
    image = Image.new("RGBA", (4, 2), (*RED, 255))
    image.putpixel((0, 0), (*BLUE, 0))  # fully transparent
    image.putpixel((1, 0), (0, 0, 0, 128))  # half transparent black
    rgb = decode_rgb(_encode(image, "PNG"), "x")
    assert tuple(rgb[0, 0]) == (BACKGROUND,) * 3 and tuple(rgb[1, 1]) == RED
    assert np.abs(rgb[0, 1].astype(int) - 127).max() <= 1
    gray_alpha = decode_rgb(_encode(Image.new("LA", (2, 2), (0, 0)), "PNG"), "x")
    assert (gray_alpha == BACKGROUND).all()


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("image_format", ["JPEG", "PNG"])
def test_the_exif_orientation_is_applied_as_pillow_applies_it(orientation, image_format):
    image = _two_tone()
    image.paste((20, 200, 40), (0, 0, 6, 4))  # a green corner, so every flip and turn differs
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(image, image_format, exif=exif.tobytes(), **({"quality": 95} if image_format == "JPEG" else {}))
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"), int)
    rgb = decode_rgb(data, "x")
    assert rgb.shape == expected.shape
    assert np.abs(rgb.astype(int) - expected).mean() < 3


def test_a_motion_photo_jpeg_with_a_video_after_its_end_decodes_and_one_cut_short_does_not():
    jpeg = _encode(_two_tone(), "JPEG", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 1
    thumbnail_inside = _encode(_two_tone(), "JPEG", quality=95, exif=exif.tobytes())
    video = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40 + b"\xff\xd9" + bytes(5000)  # no EOI at its end
    for data in (jpeg + video, thumbnail_inside + video):
        check_image(data, "motion.jpg")
        assert decode_rgb(data, "motion.jpg").shape == (20, 40, 3)
    for cut in (len(jpeg) - 2, len(jpeg) // 2):
        with pytest.raises(PipelineError, match="motion.jpg: truncated JPEG"):
            check_image(jpeg[:cut], "motion.jpg")


def test_a_png_with_a_broken_checksum_or_cut_short_is_refused_by_the_header_check():
    png = bytearray(_encode(_two_tone(), "PNG"))
    idat = png.find(b"IDAT")
    png[idat + 6] ^= 0xFF  # one flipped bit of compressed data: the chunk's CRC no longer matches
    with pytest.raises(PipelineError, match="leaf.png: broken"):
        check_image(bytes(png), "leaf.png")
    with pytest.raises(PipelineError, match="leaf.png: broken"):
        check_image(_encode(_two_tone(), "PNG")[:-20], "leaf.png")


def _save(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _mixed_folders(root: Path) -> dict:
    """Own data in every format and kind a user may have: two classes, six images each, a test folder."""
    exif = Image.Exif()
    exif[0x0112] = 6
    kinds = [("png", lambda im: _encode(im, "PNG")), ("webp", lambda im: _encode(im, "WEBP")),
             ("bmp", lambda im: _encode(im, "BMP")), ("tif", lambda im: _encode(im.convert("CMYK"), "TIFF")),
             ("jpg", lambda im: _encode(im, "JPEG", exif=exif.tobytes())),
             ("png", lambda im: _encode(Image.fromarray(np.asarray(im.convert("L"), np.uint16) * 257), "PNG"))]
    for k, label in enumerate(("rust", "healthy")):
        for i, (suffix, encode) in enumerate(kinds):
            image = Image.new("RGB", (48, 32), (40 + 150 * k, 60 + 20 * i, 90)).convert("RGBA" if i == 0 else "RGB")
            _save(root / "train" / label / f"{label}{i}.{suffix}", encode(image))
    _save(root / "test" / "a.jpg", _encode(Image.new("RGB", (48, 32), (190, 90, 90)), "JPEG") + b"video" * 100)
    _save(root / "test" / "b.png", _encode(Image.new("P", (48, 32), 3), "PNG"))
    return {"competition": OWN_DATA.slug, "data": {"source": "local"},
            "own_data": {"train_dir": str(root / "train"), "test_dir": str(root / "test")},
            # Plain stratified folds: a class's flat images are all near-duplicates of each other, so grouping them
            # (group_by: auto) would hold out a whole class per fold and leave nothing to learn it from.
            "folds": {"n_splits": 2, "group_by": "given"}, "finetune": {"folds": [0, 1]},
            # A temperature always: with two folds, nested CV leaves each outer fold's recipe one inner fold, where
            # no calibration can be judged, so the default list would fall back to its first entry (none).
            "ensemble": {"models": ["heads-tf_efficientnet_lite0"], "calibration": ["temperature"]}}


def test_own_data_in_every_format_runs_to_a_submission(repo_copy, tmp_path, run_stage):
    set_params(repo_copy, **_mixed_folders(tmp_path / "leaves"))
    for stage in (["download"], ["sample"], ["frames"], ["features", "tf_efficientnet_lite0"], ["folds"],
                  ["heads", "tf_efficientnet_lite0"], ["ensemble"], ["submission"]):
        status, lines = run_stage(repo_copy, *stage)
        assert status == 0, (stage, lines)
    submission = pd.read_csv(repo_copy / "submissions" / "latest.csv")
    assert list(submission.columns) == ["id", "healthy", "rust"] and sorted(submission.id) == ["a.jpg", "b.png"]
    # The two classes are a dark and a light red in every format: a model that reads them right is nearly sure of
    # each (chance: log 2); one fed the wrong pixels (an alpha channel, 16-bit grey misread) would not be.
    cv = json.loads((repo_copy / "metrics" / "submission" / "metrics.json").read_text())["cv_log_loss"]
    assert cv < 0.5 * math.log(2)


@pytest.mark.parametrize("damage, message", [
    (lambda root: _save(root / "train" / "rust" / "rust1.png", _encode(_two_tone(), "PNG")[:-30]), "broken"),
    (lambda root: _save(root / "test" / "a.jpg", _encode(_two_tone(), "JPEG")[:300]), "truncated JPEG"),
    (lambda root: _save(root / "train" / "healthy" / "x.gif", b"GIF89a"), "not an image file"),
])
def test_a_broken_user_image_is_refused_at_download_naming_its_own_path(repo_copy, tmp_path, run_stage, damage,
                                                                       message):
    root = tmp_path / "leaves"
    settings = _mixed_folders(root)
    damage(root)
    set_params(repo_copy, **settings)
    status, lines = run_stage(repo_copy, "download")
    assert status == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {root}/") and message in lines[0], lines[0]
    assert not (repo_copy / raw_dir(OWN_DATA.slug)).exists()
