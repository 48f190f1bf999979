"""Image transforms, built with albumentations from params: deterministic test-time views and train augmentation.

Every transform ends at ``size x size`` uint8 HWC (the frame is squashed, not
cropped, so a hand at the frame's edge stays in view). State Farm must never
be flipped horizontally: a left-hand class becomes a right-hand one. Only a
competition whose spec says it is flip-safe may use the ``hflip`` view or
augmentation (checked in pipeline/config.py).
"""
from __future__ import annotations

import albumentations as A
import cv2

from pipeline.config import AugmentParams

# View name -> fraction of the frame cut from (top, right, bottom, left) before resizing.
CROPS = {
    "full": (0.0, 0.0, 0.0, 0.0),
    "zoom": (0.05, 0.05, 0.05, 0.05),
    "left": (0.0, 0.1, 0.0, 0.0),
    "right": (0.0, 0.0, 0.0, 0.1),
    "up": (0.0, 0.0, 0.1, 0.0),
    "down": (0.1, 0.0, 0.0, 0.0),
}
VIEWS = (*CROPS, "hflip")
FLIP_VIEWS = ("hflip",)


INTERPOLATIONS = {"bicubic": cv2.INTER_CUBIC, "bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}


def view_transform(view: str, size: int, interpolation: str = "bicubic") -> A.Compose:
    """One deterministic test-time view of the frame, resized the way the backbone was trained (timm data config)."""
    steps = [A.HorizontalFlip(p=1.0)] if view == "hflip" else []
    top, right, bottom, left = CROPS.get(view, CROPS["full"])
    if any((top, right, bottom, left)):
        steps.append(A.CropAndPad(percent=(-top, -right, -bottom, -left), keep_size=False))
    return A.Compose([*steps, A.Resize(size, size, interpolation=INTERPOLATIONS.get(interpolation, cv2.INTER_CUBIC))])


def train_transform(augment: AugmentParams, size: int, seed: int) -> A.Compose:
    """Random augmentation for training; reseed per sample (``set_random_seed``) for worker-independent results."""
    steps = [
        A.Affine(rotate=(-augment.rotate_degrees, augment.rotate_degrees),
                 translate_percent=(-augment.translate, augment.translate), scale=tuple(augment.scale),
                 border_mode=cv2.BORDER_REFLECT_101, p=1.0),
        A.RandomResizedCrop((size, size), scale=tuple(augment.crop_scale), ratio=tuple(augment.crop_ratio),
                            interpolation=cv2.INTER_CUBIC),
        A.ColorJitter(brightness=augment.brightness, contrast=augment.contrast, saturation=augment.saturation,
                      hue=augment.hue, p=1.0),
    ]
    if augment.dropout_holes:
        steps.append(A.CoarseDropout(num_holes_range=(1, augment.dropout_holes),
                                     hole_height_range=(0.05, augment.dropout_size),
                                     hole_width_range=(0.05, augment.dropout_size), p=0.5))
    if augment.hflip:
        steps.append(A.HorizontalFlip(p=0.5))
    return A.Compose(steps, seed=seed)
