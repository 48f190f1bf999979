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

INTERPOLATIONS = {"bicubic": cv2.INTER_CUBIC, "bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}


def view_transform(view: str, size: int, interpolation: str = "bicubic") -> A.Compose:
    """One deterministic test-time view of the frame, resized the way the backbone was trained (timm data config)."""
    steps = [A.HorizontalFlip(p=1.0)] if view == "hflip" else []
    top, right, bottom, left = CROPS.get(view, CROPS["full"])
    if any((top, right, bottom, left)):
        steps.append(A.CropAndPad(percent=(-top, -right, -bottom, -left), keep_size=False))
    return A.Compose([*steps, A.Resize(size, size, interpolation=INTERPOLATIONS.get(interpolation, cv2.INTER_CUBIC))])


def _toward(neutral: float, value: float, strength: float) -> float:
    """``value`` moved toward ``neutral`` (strength < 1) or beyond it (> 1); exactly ``value`` at 1."""
    return value if strength == 1 else neutral + (value - neutral) * strength


def train_transform(augment: AugmentParams, size: int, seed: int, strength: float = 1.0) -> A.Compose:
    """Random augmentation for training, its magnitudes scaled by ``strength`` (0: none; a model's
    ``augment_strength``); reseed per sample (``set_random_seed``) for worker-independent results."""
    def scaled(value: float) -> float:
        return _toward(0.0, value, strength)

    scale = tuple(_toward(1.0, s, strength) for s in augment.scale)
    steps = [
        A.Affine(rotate=(-scaled(augment.rotate_degrees), scaled(augment.rotate_degrees)),
                 translate_percent=(-scaled(augment.translate), scaled(augment.translate)), scale=scale,
                 border_mode=cv2.BORDER_REFLECT_101, p=1.0),
        A.RandomResizedCrop((size, size), scale=(_toward(1.0, augment.crop_scale[0], strength), augment.crop_scale[1]),
                            ratio=tuple(augment.crop_ratio), interpolation=cv2.INTER_CUBIC),
        A.ColorJitter(brightness=scaled(augment.brightness), contrast=scaled(augment.contrast),
                      saturation=scaled(augment.saturation), hue=scaled(augment.hue), p=1.0),
    ]
    if augment.dropout_holes and strength:
        steps.append(A.CoarseDropout(num_holes_range=(1, augment.dropout_holes),
                                     hole_height_range=(0.05, augment.dropout_size),
                                     hole_width_range=(0.05, augment.dropout_size), p=0.5))
    if augment.hflip:
        steps.append(A.HorizontalFlip(p=0.5))
    return A.Compose(steps, seed=seed)
