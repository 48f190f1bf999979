"""Image transforms, built with albumentations from params: deterministic test-time views and train augmentation.

Every transform ends at ``size x size`` uint8 HWC (the frame is squashed, not
cropped, so a hand at the frame's edge stays in view). State Farm must never
be flipped horizontally: a left-hand class becomes a right-hand one. Only a
competition whose spec says it is flip-safe may use the ``hflip`` view or
augmentation (checked in pipeline/config.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import pipeline.offline  # noqa: F401  (first: it keeps albumentations from calling PyPI)
import albumentations as A
import cv2

from pipeline.config import AugmentParams
from pipeline.errors import PipelineError

# View name -> fraction of the frame cut from (top, right, bottom, left) before resizing.
CROPS = {
    "full": (0.0, 0.0, 0.0, 0.0),
    "zoom": (0.05, 0.05, 0.05, 0.05),
    "left": (0.0, 0.1, 0.0, 0.0),
    "right": (0.0, 0.0, 0.0, 0.1),
    "up": (0.0, 0.0, 0.1, 0.0),
    "down": (0.1, 0.0, 0.0, 0.0),
}

# Regions a fine-tuned model can look at instead of, or beside, the whole frame (``regions`` of a finetune.models
# entry): (left, top, right, bottom) as fractions of the frame, in State Farm's camera geometry (the camera on the
# passenger side: the driver left of centre facing right, the wheel at the right, the console below the camera).
# Drawn on a stand-in frame in docs/regions.jpg (bench/regions.py --draw); chosen by bench/regions.py's
# measurement on the real development set (docs/results.md). Test-time views (CROPS) apply within the region.
REGIONS = {
    "full": (0.0, 0.0, 1.0, 1.0),
    "driver": (0.1, 0.0, 0.9, 0.85),  # the driver, less window and seat
    "head": (0.2, 0.0, 0.7, 0.6),  # head and shoulders: a phone at the ear, a cup, make-up, a turned head
    "hands": (0.4, 0.25, 1.0, 0.85),  # both hands, the wheel, a phone held low
    "wheel": (0.6, 0.1, 1.0, 0.7),
    "lap": (0.2, 0.5, 0.8, 1.0),  # a phone texted on in the lap
    "console": (0.0, 0.5, 0.5, 1.0),  # the radio and the console, between camera and driver
    "bottom_right": (0.5, 0.5, 1.0, 1.0),  # the quarter the 1st-place solution fed its net
}

INTERPOLATIONS = {"bicubic": cv2.INTER_CUBIC, "bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}


def region_box(region: str, height: int, width: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) pixel bounds of ``region`` in a ``height x width`` frame: one rounding for the CPU
    and the GPU paths."""
    if region not in REGIONS:
        raise PipelineError(f"region {region!r}: unknown; regions are {', '.join(REGIONS)}")
    left, top, right, bottom = REGIONS[region]
    return round(top * height), round(bottom * height), round(left * width), round(right * width)


def in_regions(frame, regions) -> list:
    """The frame (HWC) cut to each region, in order: what a model of ``regions`` sees of it."""
    if list(regions) == ["full"]:
        return [frame]
    boxes = [region_box(region, *frame.shape[:2]) for region in regions]
    return [frame[top:bottom, left:right] for top, bottom, left, right in boxes]


def view_transform(view: str, size: int, interpolation: str = "bicubic") -> A.Compose:
    """One deterministic test-time view of the frame, resized the way the backbone was trained (timm data config)."""
    if view != "hflip" and view not in CROPS:
        raise PipelineError(f"test view {view!r}: unknown; views are {', '.join([*CROPS, 'hflip'])}")
    if interpolation not in INTERPOLATIONS:
        raise PipelineError(f"interpolation {interpolation!r} (the backbone's data config): unknown; "
                            f"known: {', '.join(INTERPOLATIONS)}")
    steps = [A.HorizontalFlip(p=1.0)] if view == "hflip" else []
    top, right, bottom, left = CROPS.get(view, CROPS["full"])
    if any((top, right, bottom, left)):
        steps.append(A.CropAndPad(percent=(-top, -right, -bottom, -left), keep_size=False))
    return A.Compose([*steps, A.Resize(size, size, interpolation=INTERPOLATIONS[interpolation])])


def _toward(neutral: float, value: float, strength: float) -> float:
    """``value`` moved toward ``neutral`` (strength < 1) or beyond it (> 1); exactly ``value`` at 1."""
    return value if strength == 1 else neutral + (value - neutral) * strength


@dataclass(frozen=True)
class AugmentRanges:
    """The ``augment`` params with their magnitudes scaled by ``strength`` (0: none; a model's ``augment_strength``):
    what both the CPU path (``train_transform``) and the GPU path (pipeline/views/device_augment.py) sample from."""

    rotate_degrees: float
    translate: float  # of the frame's width and height
    scale: tuple[float, float]  # x and y drawn independently (albumentations' Affine, keep_ratio=False)
    crop_scale: tuple[float, float]
    crop_ratio: tuple[float, float]
    brightness: float
    contrast: float
    saturation: float
    hue: float
    dropout_holes: int  # 0: no coarse dropout
    dropout_size: tuple[float, float]  # a hole's side, as fractions of the image's side
    dropout_p: float
    hflip: bool

    @classmethod
    def of(cls, augment: AugmentParams, strength: float = 1.0) -> "AugmentRanges":
        def scaled(value: float) -> float:
            return _toward(0.0, value, strength)

        return cls(rotate_degrees=scaled(augment.rotate_degrees), translate=scaled(augment.translate),
                   scale=tuple(_toward(1.0, s, strength) for s in augment.scale),
                   crop_scale=(_toward(1.0, augment.crop_scale[0], strength), augment.crop_scale[1]),
                   crop_ratio=tuple(augment.crop_ratio), brightness=scaled(augment.brightness),
                   contrast=scaled(augment.contrast), saturation=scaled(augment.saturation), hue=scaled(augment.hue),
                   dropout_holes=augment.dropout_holes if strength else 0, dropout_size=(0.05, augment.dropout_size),
                   dropout_p=0.5, hflip=augment.hflip)


def train_transform(augment: AugmentParams, size: int, seed: int, strength: float = 1.0) -> A.Compose:
    """Random augmentation for training, its magnitudes scaled by ``strength`` (``AugmentRanges``); reseed per
    sample (``set_random_seed``) for worker-independent results."""
    ranges = AugmentRanges.of(augment, strength)
    steps = [
        A.Affine(rotate=(-ranges.rotate_degrees, ranges.rotate_degrees),
                 translate_percent=(-ranges.translate, ranges.translate), scale=ranges.scale,
                 border_mode=cv2.BORDER_REFLECT_101, p=1.0),
        A.RandomResizedCrop((size, size), scale=ranges.crop_scale, ratio=ranges.crop_ratio,
                            interpolation=cv2.INTER_CUBIC),
        A.ColorJitter(brightness=ranges.brightness, contrast=ranges.contrast, saturation=ranges.saturation,
                      hue=ranges.hue, p=1.0),
    ]
    if ranges.dropout_holes:
        steps.append(A.CoarseDropout(num_holes_range=(1, ranges.dropout_holes), hole_height_range=ranges.dropout_size,
                                     hole_width_range=ranges.dropout_size, p=ranges.dropout_p))
    if ranges.hflip:
        steps.append(A.HorizontalFlip(p=0.5))
    return A.Compose(steps, seed=seed)
