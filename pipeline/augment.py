"""Image transforms, built with albumentations from params: deterministic test-time views and train augmentation.

Every transform ends at ``size x size`` uint8 HWC (the frame is squashed, not
cropped, so a hand at the frame's edge stays in view). State Farm must never
be flipped horizontally: a left-hand class becomes a right-hand one. Only a
competition whose spec says it is flip-safe may use the ``hflip`` view or
augmentation (checked in pipeline/config.py).
"""
from __future__ import annotations

from dataclasses import dataclass

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

INTERPOLATIONS = {"bicubic": cv2.INTER_CUBIC, "bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}


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
    what both the CPU path (``train_transform``) and the GPU path (pipeline/device_augment.py) sample from."""

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
