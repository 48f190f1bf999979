"""features.decode: device -- views decoded by torchvision (nvJPEG on a GPU; here its CPU twin) match the CPU path."""
from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.augment import CROPS, view_transform
from pipeline.device_decode import EncodedViews
from pipeline.errors import PipelineError
from pipeline.image_data import ArchiveImages, Feed, batches
from pipeline.images import ImageArchive

SIZE = 64


def _scene(seed: int) -> np.ndarray:
    """A 320x240 frame with large shapes placed off-centre, so a wrong crop, flip or turn shows."""
    rng = np.random.default_rng(seed)
    frame = np.full((240, 320, 3), 40, np.uint8)
    cv2.rectangle(frame, (20, 30), (140, 200), tuple(int(c) for c in rng.integers(80, 255, 3)), -1)
    cv2.circle(frame, (250, 70), 45, tuple(int(c) for c in rng.integers(80, 255, 3)), -1)
    cv2.line(frame, (0, 239), (319, 120), (255, 255, 255), 9)
    return frame


def _jpeg(rgb: np.ndarray, orientation: int = 1) -> bytes:
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    Image.fromarray(rgb).save(buffer, "JPEG", quality=95, exif=exif)
    return buffer.getvalue()


@pytest.fixture
def folder(tmp_path):
    """Upright JPEGs, a JPEG stored sideways with an EXIF orientation, a PNG, and a JPEG with a video appended."""
    frames = {f"train/c0/img_{i}.jpg": _scene(i) for i in range(5)}
    for name, frame in frames.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(_jpeg(frame))
    frames["train/c0/sideways.jpg"] = _scene(7)
    (tmp_path / "train/c0/sideways.jpg").write_bytes(_jpeg(np.rot90(_scene(7), k=1).copy(), orientation=6))
    frames["train/c0/drawing.png"] = _scene(8)
    cv2.imwrite(str(tmp_path / "train/c0/drawing.png"), cv2.cvtColor(_scene(8), cv2.COLOR_RGB2BGR))
    frames["train/c0/motion.jpg"] = _scene(9)
    (tmp_path / "train/c0/motion.jpg").write_bytes(_jpeg(_scene(9)) + b"\x00\x00\x00\x18ftypmp42" + bytes(5000))
    return ImageArchive(tmp_path), list(frames), frames


def _device_views(archive, members, view, device="cpu"):
    dataset = EncodedViews(archive, members, view, SIZE)
    feed = Feed(torch.device(device), 4, 0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), amp=False)
    out = np.zeros((len(members), SIZE, SIZE, 3), np.float32)
    for indices, inputs in feed.inputs(feed.loader(dataset)):
        out[indices.numpy()] = inputs.permute(0, 2, 3, 1).float().cpu().numpy() * 255
    return out


# On a GPU machine the cuda case checks nvJPEG / nvImageCodec itself; elsewhere torchvision's CPU twin stands in.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("view", [*CROPS, "hflip"])
def test_device_views_match_the_cpu_views(folder, view, device):
    archive, members, frames = folder
    cpu = ArchiveImages(archive, members, view_transform(view, SIZE), SIZE)
    expected = np.concatenate([images.numpy() for _, images in batches(torch.utils.data.DataLoader(
        cpu, batch_size=4, collate_fn=lambda b: b))]).astype(np.float32)
    device = _device_views(archive, members, view, device)
    # Same geometry, different decoders and resamplers: a few grey levels apart on average, and each image
    # is far closer to its own CPU view than to any other image's (a wrong crop, flip or turn would not be).
    assert np.abs(device - expected).mean() < 6
    distance = np.abs(device[:, None] - expected[None]).mean(axis=(2, 3, 4))
    assert (distance.argmin(axis=1) == np.arange(len(members))).all()
    truth = np.stack([view_transform(view, SIZE)(image=frames[m])["image"] for m in members]).astype(np.float32)
    assert np.abs(device - truth).mean(axis=(1, 2, 3)).max() < 8  # the sideways JPEG came out upright


def test_a_broken_image_is_named_as_one_line(folder, tmp_path):
    archive, members, _ = folder
    good = (tmp_path / members[0]).read_bytes()
    (tmp_path / "train/c0/cut.jpg").write_bytes(good[: len(good) // 2])
    archive = ImageArchive(tmp_path)
    with pytest.raises(PipelineError, match=r"train/c0/cut.jpg: truncated JPEG"):
        _device_views(archive, [members[0], "train/c0/cut.jpg"], "full")
