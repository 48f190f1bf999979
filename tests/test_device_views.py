"""features.views_on: device -- views cropped and resized by torch from cached frames match the CPU path."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from pipeline.errors import PipelineError
from pipeline.views.augment import CROPS, view_transform
from pipeline.views.device_views import DeviceViews
from pipeline.views.image_data import FrameImages
from pipeline.views.image_data import Feed

SIZE = 64


def _scene(seed: int) -> np.ndarray:
    """A 320x240 frame with large shapes placed off-centre, so a wrong crop, flip or turn shows."""
    rng = np.random.default_rng(seed)
    frame = np.full((240, 320, 3), 40, np.uint8)
    cv2.rectangle(frame, (20, 30), (140, 200), tuple(int(c) for c in rng.integers(80, 255, 3)), -1)
    cv2.circle(frame, (250, 70), 45, tuple(int(c) for c in rng.integers(80, 255, 3)), -1)
    cv2.line(frame, (0, 239), (319, 120), (255, 255, 255), 9)
    return frame


FRAMES = np.stack([_scene(i) for i in range(6)])


def _images(dataset, device="cpu"):
    feed = Feed(torch.device(device), 4, 0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), precision=None)
    out = np.zeros((len(dataset), SIZE, SIZE, 3), np.float32)
    for indices, inputs in feed.inputs(feed.loader(dataset)):
        out[indices.numpy()] = inputs.permute(0, 2, 3, 1).float().cpu().numpy() * 255
    return out


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("view", [*CROPS, "hflip"])
def test_device_views_match_the_cpu_views(view, device):
    rows = np.array([5, 0, 3, 1, 4, 2])  # any order of rows, as a fold's held-out images come
    expected = _images(FrameImages([FRAMES], rows, view_transform(view, SIZE), SIZE))
    made = _images(DeviceViews([FRAMES], rows, view, SIZE), device)
    # Same geometry, different resamplers: a few grey levels apart on average, and each image is far closer to
    # its own CPU view than to any other image's (a wrong crop, flip or row would not be).
    assert np.abs(made - expected).mean() < 6
    distance = np.abs(made[:, None] - expected[None]).mean(axis=(2, 3, 4))
    assert (distance.argmin(axis=1) == np.arange(len(rows))).all()


def test_an_unknown_view_or_interpolation_is_refused_naming_it():
    with pytest.raises(PipelineError, match="test view 'tilt': unknown; views are full, zoom"):
        DeviceViews([FRAMES], [0], "tilt", SIZE)
    with pytest.raises(PipelineError, match="interpolation 'lanczos9'"):
        view_transform("full", SIZE, "lanczos9")


@pytest.mark.parametrize("view", ["full", "zoom", "right"])
def test_device_views_of_regions_match_the_cpu_views_region_by_region(view):
    """A multi-region net predicts from device views on a GPU (where it trained on device-augmented batches): each
    frame's regions, in order, as the CPU path cuts them."""
    regions, rows = ["full", "head", "hands"], np.array([4, 1, 2])
    expected = FrameImages([FRAMES], rows, view_transform(view, SIZE), SIZE, regions=regions)
    made = DeviceViews([FRAMES], rows, view, SIZE, regions=regions)
    items = list(range(len(rows)))
    cpu = expected.__getitems__(items)["image"].float().numpy()
    device = made.to_images(made.__getitems__(items)["image"], torch.as_tensor(items), torch.device("cpu"))
    device = device.float().numpy()
    assert cpu.shape == device.shape == (len(rows) * len(regions), SIZE, SIZE, 3)
    assert np.abs(device - cpu).mean() < 6
    distance = np.abs(device[:, None] - cpu[None]).mean(axis=(2, 3, 4))
    assert (distance.argmin(axis=1) == np.arange(len(cpu))).all()
