"""Test-time views decoded on the model's device: workers only read bytes, nvJPEG decodes whole batches on the GPU.

On a GPU the features stage is bound by JPEG decoding in CPU workers, not by
the model (bench/features.py prints both). With ``features.decode: device``
(``auto`` picks it when the model is on CUDA) a worker reads each file's bytes
and the main process decodes the batch on the model's device with
``torchvision.io.decode_jpeg`` (nvJPEG), then crops and resizes there with
antialiased interpolation, the same view geometry as pipeline/augment.py's CROPS. What
nvJPEG cannot take as it is -- PNGs and other formats, JPEGs with an EXIF
orientation -- a worker decodes upright on the CPU (pipeline/decoding.py) and
its frame joins the batch on the device. The CPU path (albumentations on
reduced-size decodes) stays the default on a CPU: the two paths agree to a few
grey levels, not bit for bit (tests/test_device_decode.py).

Measured on an H100 with 15 workers (docs/gpu.md): 5,245 img/s against 3,985
for CPU decoding. nvJPEG's Huffman stage runs on one CPU thread behind
torchvision's global decoder lock, so this is not yet the model's 19,000 img/s;
NVIDIA's nvImageCodec (hardware JPEG engines) measured no faster here (4,106).
"""
from __future__ import annotations

import io
from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_jpeg

from pipeline.augment import CROPS
from pipeline.decoding import decode_rgb, jpeg_end
from pipeline.errors import PipelineError
from pipeline.images import CompetitionImages, ImageArchive

ORIENTATION = 0x0112  # EXIF tag
MODES = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest"}


def _encoded_or_frame(data: bytes, where: str) -> torch.Tensor:
    """The JPEG's bytes (1-D uint8) when nvJPEG can take them as they are -- an upright JPEG, cut at its
    end-of-image marker so a phone's appended video is left out -- else the upright decoded frame (HxWx3)."""
    if data.startswith(b"\xff\xd8") and isinstance(end := jpeg_end(data), int):
        with Image.open(io.BytesIO(data)) as image:
            if image.getexif().get(ORIENTATION, 1) == 1:
                return torch.frombuffer(bytearray(data[:end]), dtype=torch.uint8)
    return torch.from_numpy(decode_rgb(data, where))


def _decode_jpegs(jpegs: list[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """CHW uint8 RGB frames on ``device`` (None where a JPEG cannot be decoded), in one batched call."""
    if not jpegs:
        return []
    try:
        return decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:  # one bad file fails the whole batch: decode one by one to find it
        frames = []
        for jpeg in jpegs:
            try:
                frames.append(decode_jpeg(jpeg, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                frames.append(None)
        return frames


class EncodedViews(Dataset):
    """``members[i]`` of ``archive`` as bytes (or a CPU-decoded frame); ``to_images`` makes the batch's
    ``view`` at ``size x size`` uint8 NHWC on the device, as ``view_transform`` does on the CPU."""

    def __init__(self, archive: ImageArchive | CompetitionImages, members: Sequence[str], view: str, size: int,
                 interpolation: str = "bicubic"):
        self.archive, self.members, self.view, self.size = archive, members, view, size
        self.mode = MODES.get(interpolation, "bicubic")

    def __len__(self) -> int:
        return len(self.members)

    def __getitems__(self, indices: Sequence[int]) -> dict:
        """The batch's JPEG bytes as one flat tensor (one pinned copy, not one per image) with each image's length
        (0: not a JPEG nvJPEG takes), and the other images' CPU-decoded frames."""
        encoded, lengths, frames, errors = [], [], {}, []
        for row, index in enumerate(indices):
            name = self.members[index]
            try:
                item = _encoded_or_frame(self.archive.read_bytes(name), self.archive.where(name))
                errors.append("")
            except PipelineError as error:
                item = torch.zeros(0, dtype=torch.uint8)
                errors.append(str(error))
            if item.dim() == 3:
                frames[row] = item
            encoded.append(item if item.dim() == 1 else item[:0, 0, 0])
            lengths.append(len(encoded[-1]))
        image = {"encoded": torch.cat(encoded), "lengths": lengths, "frames": frames}
        return {"index": torch.as_tensor(indices), "image": image, "error": errors}

    def to_images(self, batch: dict, indices: torch.Tensor, device: torch.device) -> torch.Tensor:
        frames = self._decode(batch, indices, device)
        out = torch.empty(len(frames), self.size, self.size, 3, dtype=torch.uint8, device=device)
        by_shape: dict[tuple, list[int]] = {}
        for row, frame in enumerate(frames):
            by_shape.setdefault(tuple(frame.shape), []).append(row)
        for rows in by_shape.values():  # one resize per frame size: State Farm's are all 640x480
            out[rows] = self._view(torch.stack([frames[r] for r in rows]))
        return out

    def _decode(self, batch: dict, indices: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
        """CHW uint8 frames on ``device``: the JPEG bytes through one batched decode, CPU frames copied over."""
        pieces = torch.split(batch["encoded"], batch["lengths"])
        jpegs = [row for row, length in enumerate(batch["lengths"]) if length]
        frames = [None] * len(pieces)
        for row, frame in batch["frames"].items():
            frames[row] = frame.to(device, non_blocking=True).permute(2, 0, 1)
        decoded = _decode_jpegs([pieces[r] for r in jpegs], device)
        for row, frame in zip(jpegs, decoded):
            if frame is None:  # refused although its markers were sound (broken entropy-coded data)
                raise PipelineError(f"{self.archive.where(self.members[int(indices[row])])}: not a valid JPEG")
            frames[row] = frame
        return frames

    def _view(self, frames: torch.Tensor) -> torch.Tensor:
        """NCHW uint8 frames of one size -> this view's crop, resized: NHWC uint8."""
        height, width = frames.shape[-2:]
        top, right, bottom, left = CROPS.get(self.view, CROPS["full"])
        frames = frames[..., round(top * height):height - round(bottom * height),
                        round(left * width):width - round(right * width)]
        if self.view == "hflip":
            frames = frames.flip(-1)
        resized = F.interpolate(frames.float(), size=(self.size, self.size), mode=self.mode,
                                antialias=self.mode != "nearest", **({} if self.mode == "nearest" else
                                                                     {"align_corners": False}))
        return resized.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
