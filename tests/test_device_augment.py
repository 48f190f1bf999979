"""finetune.augment_on: device -- kornia on the model's device draws from the same ranges as albumentations on the
CPU and, for the same sampled parameters, gives the same geometry."""
from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pytest
import torch

from pipeline.config import load_params
from pipeline.views.augment import AugmentRanges
from pipeline.views.device_augment import DeviceAugment, DeviceAugmentedImages
from pipeline.views.image_data import Feed

SIZE = 64
RANGES = AugmentRanges.of(load_params().augment, strength=1.6)


def _frame() -> np.ndarray:
    """A 160x120 frame of smooth gradients with a few soft shapes off-centre: interpolation methods agree on it to a
    grey level or two, while a turn the wrong way, a shift or a wrong crop moves whole shapes."""
    yy, xx = np.mgrid[0:120, 0:160]
    frame = np.stack([xx * 255 / 160, yy * 255 / 120, np.full_like(xx, 60.0)], -1).astype(np.uint8)
    cv2.rectangle(frame, (15, 20), (70, 100), (250, 30, 200), -1)
    cv2.circle(frame, (125, 35), 22, (20, 240, 90), -1)
    return cv2.GaussianBlur(frame, (0, 0), 2.5)


def _as_float(frame: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255


def _as_uint8(images: torch.Tensor) -> np.ndarray:
    return (images[0].permute(1, 2, 0).numpy() * 255).round().clip(0, 255)


def _draw(step: int, seed: int, adjust=lambda drawn: drawn) -> tuple[dict, np.ndarray]:
    """The parameters that geometry step ``step`` (0: affine, 1: resized crop) draws for the test frame, passed
    through ``adjust``, and the frame it makes with them."""
    geometry = DeviceAugment(RANGES, SIZE).geometry[step]
    frame = _as_float(_frame())
    torch.manual_seed(seed)
    drawn = adjust(geometry.forward_parameters(frame.shape))
    return drawn, _as_uint8(geometry(frame, params=drawn))


@pytest.mark.parametrize("seed", range(4))
def test_the_affine_step_matches_albumentations_with_the_same_angle_shift_and_scales(seed):
    def whole_pixels(drawn: dict) -> dict:  # albumentations shifts by whole pixels
        return {**drawn, "translations": drawn["translations"].round()}

    drawn, on_device = _draw(0, seed, whole_pixels)
    frame = _frame()

    angle = float(drawn["angle"][0])
    (shift_x, shift_y), (scale_x, scale_y) = drawn["translations"][0].tolist(), drawn["scale"][0].tolist()
    assert abs(angle) <= RANGES.rotate_degrees and RANGES.scale[0] <= min(scale_x, scale_y) <= RANGES.scale[1]

    def albumentations(rotate: float) -> np.ndarray:
        shift = {"x": (shift_x / 160,) * 2, "y": (shift_y / 120,) * 2}
        step = A.Affine(rotate=(rotate, rotate), translate_percent=shift,
                        scale={"x": (scale_x, scale_x), "y": (scale_y, scale_y)}, border_mode=cv2.BORDER_REFLECT_101,
                        p=1.0)
        return step(image=frame)["image"].astype(float)

    inner = np.s_[8:-8, 8:-8]  # borders: grid_sample's reflection and OpenCV's REFLECT_101 differ by a pixel
    assert np.abs(albumentations(-angle) - on_device)[inner].mean() < 0.6  # kornia turns the other way round
    if abs(angle) > 3:
        assert np.abs(albumentations(angle) - on_device)[inner].mean() > 4  # the comparison sees a turn


@pytest.mark.parametrize("seed", range(4))
def test_the_resized_crop_matches_albumentations_on_the_same_box(seed):
    drawn, on_device = _draw(1, seed)
    frame = _frame()

    (left, top), _, (right, bottom), _ = drawn["src"][0].int().tolist()
    width, height = right - left + 1, bottom - top + 1
    assert RANGES.crop_scale[0] - 0.02 <= width * height / (160 * 120) <= RANGES.crop_scale[1] + 0.02
    assert RANGES.crop_ratio[0] - 0.05 <= width / height <= RANGES.crop_ratio[1] + 0.05

    def albumentations(shift: int) -> np.ndarray:
        box = A.Crop(left + shift, top + shift, right + 1 + shift, bottom + 1 + shift)
        return A.Compose([box, A.Resize(SIZE, SIZE, cv2.INTER_CUBIC)])(image=frame)["image"].astype(float)

    assert np.abs(albumentations(0) - on_device).mean() < 1.5  # kornia's bicubic and OpenCV's differ a little
    off = 3 if bottom + 3 < 120 and right + 3 < 160 else -3
    assert np.abs(albumentations(off) - on_device).mean() > 3  # a box 3 pixels off is told apart


def test_coarse_dropout_blanks_half_the_images_with_at_most_the_holes_and_sizes_asked():
    torch.manual_seed(0)
    white = torch.ones(400, 3, SIZE, SIZE)
    mask = DeviceAugment(RANGES, SIZE).holes(white)[:, 0]
    blanked = mask.flatten(1).any(1)
    assert 0.4 < blanked.float().mean() < 0.6  # albumentations' CoarseDropout p=0.5
    largest = round(RANGES.dropout_size[1] * SIZE)
    for image in mask[blanked][:50]:
        rows, cols = image.any(1).nonzero(), image.any(0).nonzero()
        assert len(rows) >= round(0.05 * SIZE)
        # at most dropout_holes holes: their union spans at most that many hole sides in each direction
        assert len(rows) <= RANGES.dropout_holes * largest and len(cols) <= RANGES.dropout_holes * largest
    assert mask[blanked].float().mean() < RANGES.dropout_holes * RANGES.dropout_size[1] ** 2


def test_device_batches_depend_on_the_seeds_not_on_the_workers():
    frames = np.stack([np.roll(_frame(), 9 * i, 1) for i in range(6)])  # a frame cache of six images

    def epoch(seeds, workers):
        dataset = DeviceAugmentedImages([frames], np.arange(6), RANGES, SIZE, seeds=seeds)
        feed = Feed(torch.device("cpu"), 3, workers, (0.0,) * 3, (1.0,) * 3, precision=None)
        return torch.cat([inputs for _, inputs in feed.inputs(feed.loader(dataset))])

    first = epoch(np.arange(6), 0)
    assert first.shape == (6, 3, SIZE, SIZE)
    assert torch.equal(first, epoch(np.arange(6), 2))
    assert not torch.equal(first, epoch(np.arange(6) + 100, 0))
    assert (first[:, :, 8:-8, 8:-8] > 0).float().mean() > 0.9  # every image is there, not zeros
