"""Image bytes -> 8-bit RGB arrays, for every image format a user is likely to have.

JPEG (most of every Kaggle competition) keeps the fast path: libjpeg decodes at
1/2, 1/4 or 1/8 scale while staying at least as big as the model needs
(640x480 -> 320x240 for a 224 target), so most of the decoding cost is never
paid, and OpenCV applies the EXIF orientation. PNG, WebP, BMP and TIFF decode
through OpenCV too, whole: grayscale, palette, 16-bit and CMYK images become
8-bit RGB, alpha is laid over a fixed white background, and the EXIF
orientation is applied. Pillow only reads headers: the format, the size, the
orientation. ``check_image`` is the cheap test the download stage runs on a
user's files before packing them.
"""
from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.errors import PipelineError

FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "MPO")  # MPO: a phone's multi-picture JPEG
SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
BACKGROUND = 255  # where an image is transparent: white
_REDUCED = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))
# EXIF orientation (tag 0x0112) -> how to turn the stored pixels upright.
_UPRIGHT = {
    2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2), 6: lambda a: a.transpose(1, 0, 2)[:, ::-1],
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1], 8: lambda a: a.transpose(1, 0, 2)[::-1],
}


def jpeg_end(data: bytes) -> int | str:
    """Where the JPEG's end-of-image marker ends, found by walking its segments (so a thumbnail inside the EXIF
    block or a video appended after the image, as in a phone's motion photo, cannot fool it); otherwise what is
    wrong: the data stops before that marker (a file cut short), or its structure is broken."""
    if not data.startswith(b"\xff\xd8"):
        return "not a JPEG (no start-of-image marker)"
    i, n = 2, len(data)
    while i + 1 < n:
        marker = data[i + 1]
        if data[i] != 0xFF or marker == 0x00 or 0x02 <= marker < 0xC0:
            return f"broken JPEG (no valid marker at byte {i})"
        if marker == 0xD9:
            return i + 2
        if marker == 0xFF or 0xD0 <= marker <= 0xD7 or marker == 0x01:  # fill byte, restart: no length
            i += 1 if marker == 0xFF else 2
            continue
        if i + 4 > n:
            break
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0xDA:  # start of scan: entropy-coded data runs to the next real marker
            i = _scan_end(data, i)
            if i is None:
                break
    return "truncated JPEG (it stops before its end-of-image marker)"


def _scan_end(data: bytes, i: int) -> int | None:
    """The first marker after entropy-coded data (0xFF00 is an escaped byte, 0xFFD0-D7 restarts)."""
    while True:
        j = data.find(b"\xff", i)
        if j == -1 or j + 1 >= len(data):
            return None
        following = data[j + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7:
            i = j + 2
            continue
        if following == 0xFF:
            i = j + 1
            continue
        return j


def _header(data: bytes, where: str) -> tuple[str, tuple[int, int], int]:
    """(format, (width, height), EXIF orientation) from the header alone; a JPEG cut short is named as such."""
    if data.startswith(b"\xff\xd8") and isinstance(problem := jpeg_end(data), str):
        raise PipelineError(f"{where}: {problem}")
    try:
        with Image.open(io.BytesIO(data)) as image:
            orientation = image.getexif().get(0x0112, 1) if image.format not in ("JPEG", "MPO") else 1
            return image.format, image.size, orientation
    except UnidentifiedImageError:
        raise PipelineError(f"{where}: not an image file (unknown or broken header)") from None
    except Exception as error:  # Pillow raises several types for broken headers
        raise PipelineError(f"{where}: broken image file ({type(error).__name__}: {error})") from None


def check_image(data: bytes, where: str) -> None:
    """Refuse, naming ``where``, an image that will not decode: an unknown format, a JPEG cut short, a PNG (or
    WebP, BMP, TIFF) whose structure or checksums are broken. Reads the file, does not decode its pixels."""
    image_format, _, _ = _header(data, where)
    if image_format not in FORMATS:
        raise PipelineError(f"{where}: is {image_format}; the pipeline reads JPEG, PNG, WebP, BMP and TIFF")
    if image_format in ("JPEG", "MPO"):  # _header walked its segments to the end-of-image marker
        return
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except Exception as error:
        raise PipelineError(f"{where}: broken {image_format} ({type(error).__name__}: {error})") from None


def decode_rgb(data: bytes, where: str, min_size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode to an HxWx3 uint8 RGB array, upright; a JPEG at the smallest libjpeg scale still at least
    ``min_size`` (width, height). ``where`` names the image in errors."""
    image_format, (width, height), orientation = _header(data, where)
    if image_format in ("JPEG", "MPO"):
        flag = next((reduced for factor, reduced in _REDUCED if min_size is not None
                     and width // factor >= min_size[0] and height // factor >= min_size[1]), cv2.IMREAD_COLOR)
        image = cv2.imdecode(np.frombuffer(data, np.uint8), flag)  # applies the EXIF orientation itself
        if image is None:
            raise PipelineError(f"{where}: not a valid JPEG (libjpeg could not decode it)")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image_format not in FORMATS:
        raise PipelineError(f"{where}: is {image_format}; the pipeline reads JPEG, PNG, WebP, BMP and TIFF")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise PipelineError(f"{where}: not a valid {image_format} (OpenCV could not decode it)")
    rgb = _to_rgb8(image)
    return np.ascontiguousarray(_UPRIGHT.get(orientation, lambda a: a)(rgb))


def _to_rgb8(image: np.ndarray) -> np.ndarray:
    """OpenCV's raw decode (gray, gray + alpha, BGR, BGRA; 8 or 16 bits, or float) -> 8-bit RGB."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = (np.clip(image.astype(np.float32), 0, 1) * 255).round().astype(np.uint8)
    if image.ndim == 2:
        image = image[:, :, None]
    colour = image
    if image.shape[2] in (2, 4):  # the last channel is alpha
        alpha = image[:, :, -1:].astype(np.float32) / 255
        colour = (image[:, :, :-1] * alpha + BACKGROUND * (1 - alpha)).round().astype(np.uint8)
    if colour.shape[2] == 1:
        return np.repeat(colour, 3, axis=2)
    return cv2.cvtColor(np.ascontiguousarray(colour), cv2.COLOR_BGR2RGB)
