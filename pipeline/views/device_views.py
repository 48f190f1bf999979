"""Test-time views made on the model's device from cached frames: the workers only copy frames, the GPU crops and
resizes whole batches.

On a GPU the features stage used to be bound by JPEG decoding in CPU workers (docs/gpu.md: 0.27 of the model's
speed with nvJPEG, 0.21 with CPU decoding). The frames stage now decodes every image once; with
``features.views_on: device`` (``auto`` picks it when the model is on CUDA) a batch is its frames gathered from
the memory-mapped cache and copied to the device, where the view is cropped (pipeline/views/augment.py's CROPS) and
resized with antialiased interpolation. A CPU core then only copies ~230 KB per image, so a couple of cores feed
the model (bench/input_path.py). The CPU path (albumentations) stays the default on a CPU: the two agree to a few
grey levels, not bit for bit (tests/test_device_views.py). nvJPEG is no longer used: nothing decodes a JPEG after
the frames stage, which also retires its stream hazard (pytorch/vision PR #9606).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.errors import PipelineError
from pipeline.views.augment import CROPS, INTERPOLATIONS, region_box, view_transform
from pipeline.views.image_data import FrameImages, RawFrames, ResidentFrames

MODES = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest"}


class DeviceViews(RawFrames):
    """Rows of the frame arrays; ``to_images`` makes the batch's ``view`` at ``size x size`` uint8 NHWC on the
    device, as ``view_transform`` does on the CPU; with ``regions``, within each region, a frame's regions one after
    another (as image_data.FrameImages lays them out)."""

    def __init__(self, arrays: Sequence[np.ndarray] | ResidentFrames, rows: Sequence[int], view: str, size: int,
                 interpolation: str = "bicubic", regions: Sequence[str] = ("full",)):
        super().__init__(arrays, rows, size)
        self.regions = list(regions)
        if view != "hflip" and view not in CROPS:
            raise PipelineError(f"test view {view!r}: unknown; views are {', '.join([*CROPS, 'hflip'])}")
        if interpolation not in INTERPOLATIONS:
            raise PipelineError(f"interpolation {interpolation!r} (the backbone's data config): unknown; "
                                f"known: {', '.join(INTERPOLATIONS)}")
        self.view, self.mode = view, MODES[interpolation]

    def to_images(self, batch: dict, indices: torch.Tensor, device: torch.device) -> torch.Tensor:
        frames = batch["frames"].to(device, non_blocking=True).permute(0, 3, 1, 2)
        if self.regions == ["full"]:
            return self._view(frames)
        boxes = [region_box(region, *frames.shape[-2:]) for region in self.regions]
        return torch.stack([self._view(frames[..., top:bottom, left:right]) for top, bottom, left, right in boxes],
                           1).flatten(0, 1)

    def _view(self, frames: torch.Tensor) -> torch.Tensor:
        """NCHW uint8 frames of one size -> this view's crop, resized: NHWC uint8."""
        height, width = frames.shape[-2:]
        top, right, bottom, left = CROPS.get(self.view, CROPS["full"])  # hflip: the full frame, mirrored
        frames = frames[..., round(top * height):height - round(bottom * height),
                        round(left * width):width - round(right * width)]
        if self.view == "hflip":
            frames = frames.flip(-1)
        resized = F.interpolate(frames.float(), size=(self.size, self.size), mode=self.mode,
                                antialias=self.mode != "nearest", **({} if self.mode == "nearest" else
                                                                     {"align_corners": False}))
        return resized.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


@dataclass(frozen=True)
class ViewRecipe:
    """How a model's test-time views are made: where (``on``: ``cpu``, ``device`` or ``auto``), at what ``size``,
    resized with which ``interpolation`` (the backbone's own), of which ``regions``."""
    on: str
    size: int
    interpolation: str
    regions: tuple[str, ...] = ("full",)


def view_images(recipe: ViewRecipe, view: str, arrays: list[np.ndarray] | ResidentFrames, rows: np.ndarray,
                device: torch.device) -> FrameImages | DeviceViews:
    """One test-time view of ``rows`` of the frame arrays (each cut to the recipe's regions), made where its ``on``
    says: the features stage's ``features.views_on``, or for a fine-tuned net where its training batches were
    augmented (``finetune.augment_on``), so that a net predicts from pixels made the way it trained on. ``auto``: on
    a GPU if any."""
    if recipe.on == "device" or (recipe.on == "auto" and device.type == "cuda"):
        return DeviceViews(arrays, rows, view, recipe.size, recipe.interpolation, recipe.regions)
    return FrameImages(arrays, rows, view_transform(view, recipe.size, recipe.interpolation), recipe.size,
                       regions=recipe.regions)
