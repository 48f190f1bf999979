"""Fine-tuning augmentation on the model's device: batches of cached frames, kornia warps and jitters them.

On an H100, fine-tuning waited for its CPU workers: one image's albumentations
augmentation costs a core ~1.4 ms beside its ~1.5 ms decode (docs/gpu.md), so 15
workers fed ~2,300 img/s to a model that trains 4,300. With
``finetune.augment_on: device`` (``auto`` picks it when the model is on CUDA) a
batch is its frames gathered from the frame cache (pipeline/data/frames.py: decoded once,
at reduced size), unaugmented; the main
process applies the same augmentation as pipeline/views/augment.py's ``train_transform``
to the whole batch on the device with kornia, each image drawing its own
parameters from the same ``AugmentRanges``: affine (rotation, translation, x and
y scale, reflected borders), random resized crop, colour jitter, coarse dropout,
the optional flip. Kornia's rotation angle is albumentations' negated (the
ranges are symmetric, so the distributions are equal);
tests/test_device_augment.py checks that both give the same geometry for the
same sampled parameters. The frame cache holds one frame shape per split, so a batch is one tensor.
"""
from __future__ import annotations

import functools
from typing import Sequence

import kornia.augmentation as K
import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.config import AugmentParams, Recipe
from pipeline.views.augment import AugmentRanges, region_box, train_transform
from pipeline.views.image_data import FrameImages, RawFrames, ResidentFrames, made_where


def resolve_augment_on(setting: str, device: torch.device) -> str:
    """``auto``: on the device when it is a GPU; a CPU does the same work either way, and albumentations is its
    reference path."""
    return made_where(setting, device)


class DeviceAugment(torch.nn.Module):
    """float NCHW frames in [0, 1] -> augmented ``size x size`` images, each with its own random parameters."""

    def __init__(self, ranges: AugmentRanges, size: int):
        super().__init__()
        self.ranges = ranges
        low, high = ranges.scale
        self.geometry = K.AugmentationSequential(
            K.RandomAffine(degrees=ranges.rotate_degrees, translate=(ranges.translate, ranges.translate),
                           scale=(low, high, low, high), padding_mode="reflection", p=1.0),
            K.RandomResizedCrop((size, size), scale=ranges.crop_scale, ratio=ranges.crop_ratio, resample="bicubic",
                                p=1.0))
        self.colour = K.ColorJitter(ranges.brightness, ranges.contrast, ranges.saturation, ranges.hue, p=1.0)
        self.flip = K.RandomHorizontalFlip(p=0.5) if ranges.hflip else None

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        images = self.colour(self.geometry(frames).clamp_(0, 1))
        if self.ranges.dropout_holes:
            images = images * ~self.holes(images)
        return self.flip(images) if self.flip is not None else images

    def holes(self, images: torch.Tensor) -> torch.Tensor:
        """albumentations' CoarseDropout for the batch: with probability ``dropout_p`` an image gets 1..holes
        rectangles, each side a uniform fraction of the image's; a boolean [n, 1, h, w] mask of what is blanked."""
        n, _, height, width = images.shape
        holes, (small, large) = self.ranges.dropout_holes, self.ranges.dropout_size
        count = torch.randint(1, holes + 1, (n, 1)) * (torch.rand(n, 1) < self.ranges.dropout_p)
        used = torch.arange(holes)[None] < count  # [n, holes]
        sides = torch.tensor([height, width]) * (small + (large - small) * torch.rand(n, holes, 2))
        sides = sides.round().clamp(min=1)
        corner = ((torch.tensor([height, width]) - sides + 1) * torch.rand(n, holes, 2)).floor()
        box = torch.cat([corner, corner + sides], -1).to(images.device)  # y0, x0, y1, x1
        ys = torch.arange(height, device=images.device)[None, None, :, None]
        xs = torch.arange(width, device=images.device)[None, None, None, :]
        inside = ((ys >= box[..., 0, None, None]) & (ys < box[..., 2, None, None]) &
                  (xs >= box[..., 1, None, None]) & (xs < box[..., 3, None, None]))
        return (inside & used.to(images.device)[..., None, None]).any(1, keepdim=True)


class DeviceAugmentedImages(RawFrames):
    """Rows of the frame arrays, unaugmented; ``to_images`` augments the batch on the device (``DeviceAugment``)
    to ``size x size`` uint8 NHWC (or the size of the batch's ``Draw``s: progressive resizing).

    Each batch's parameters are drawn from its first item's seed (``seeds``, or the ``Draw``'s) by the CPU
    generator alone, in a fork of it (kornia draws its parameters on the CPU), so the draws neither depend on
    worker count nor disturb any generator dropout uses: ``torch.manual_seed`` would also reseed every CUDA
    generator, which a fork of the CPU's does not restore, and a GPU's dropout would restart from the augmentation
    seed at every batch.
    """

    def __init__(self, arrays: Sequence[np.ndarray] | ResidentFrames, rows: Sequence[int], ranges: AugmentRanges,
                 size: int,
                 seeds: Sequence[int] | None = None, regions: Sequence[str] = ("full",)):
        super().__init__(arrays, rows, size, seeds)
        self.ranges, self.regions = ranges, list(regions)
        self.augments = {size: DeviceAugment(ranges, size)}

    def to_images(self, batch: dict, indices: torch.Tensor, device: torch.device) -> torch.Tensor:
        """The batch's frames augmented, each cut to each of ``regions`` first (a frame's regions one after
        another, as image_data.FrameImages lays them out)."""
        frames = batch["frames"].to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
        size = batch["size"]
        if size not in self.augments:
            self.augments[size] = DeviceAugment(self.ranges, size)
        augment = self.augments[size]
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(batch["seed"])  # the CPU's generator only: see the class
            if self.regions == ["full"]:
                images = augment(frames)
            else:
                boxes = [region_box(region, *frames.shape[-2:]) for region in self.regions]
                images = torch.stack([augment(frames[..., top:bottom, left:right])
                                      for top, bottom, left, right in boxes], 1).flatten(0, 1)
        return images.mul_(255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def augmented_images(arrays: Sequence[np.ndarray] | ResidentFrames, rows: Sequence[int], augment: AugmentParams,
                     recipe: Recipe, on: str, device: torch.device) -> Dataset:
    """A fine-tuning run's training images (``rows`` of the frame arrays, each cut to the recipe's regions, at its
    image size), augmented by section ``augment`` at the recipe's strength where ``on`` (``finetune.augment_on``)
    says: albumentations on the CPU, or kornia on ``device``."""
    size, strength, regions = recipe.image_size, recipe.augment_strength, recipe.regions
    if resolve_augment_on(on, device) == "device":
        return DeviceAugmentedImages(arrays, rows, AugmentRanges.of(augment, strength), size, regions=regions)
    return FrameImages(arrays, rows, train_transform(augment, size, recipe.seed, strength), size, regions=regions,
                       resized=functools.partial(_transform_at, augment, recipe.seed, strength))


def _transform_at(augment: AugmentParams, seed: int, strength: float, size: int):
    """The CPU augmentation at another ``size`` (a progressive-resizing epoch's): a module-level function, so
    that a worker process can unpickle the dataset that holds it."""
    return train_transform(augment, size, seed, strength)
