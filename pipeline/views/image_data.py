"""Batches to the model: datasets over the frame cache (pipeline/data/frames.py), DataLoaders, normalisation.

Datasets hand over uint8 HWC batches (a view or an augmentation of cached frames, made on the CPU) or the frames
themselves with a ``to_images`` that makes them on the device; float conversion and normalisation happen on the
model's device, where they are nearly free. An item that cannot be made does not raise inside a worker (the
DataLoader would wrap the message in a traceback); it travels as an ``error`` string and ``batches`` raises it
as one line.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import pipeline.offline  # noqa: F401  (first: it keeps albumentations from calling PyPI)
import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.compute.cores import share
from pipeline.compute.devices import gpu_capability
from pipeline.compute.machine import autocast_dtype, loader_workers, main_threads, pin_memory
from pipeline.data.frames import gather
from pipeline.errors import PipelineError
from pipeline.views.augment import in_regions


def _already_batched(batch: dict) -> dict:
    return batch


def _quiet_worker(_: int) -> None:
    cv2.setNumThreads(1)  # each worker is one decoding core; OpenCV's own pool would oversubscribe


def loader(dataset: Dataset, batch_size: int, workers: int | str, device: torch.device, sampler=None) -> DataLoader:
    """Batches in the dataset's order (or the sampler's), assembled in the workers, pinned for a GPU. Workers and
    the main process's threads follow this process's share of the cores (pipeline/compute/machine.py)."""
    cores = share()
    workers = loader_workers(workers, device.type, cores)
    torch.set_num_threads(main_threads(device.type, cores, workers))
    # One decoding thread per process, set before workers fork: OpenCV's thread pool does not survive a fork
    # (a forked worker deadlocks in it), and parallelism comes from the workers anyway.
    cv2.setNumThreads(1)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=pin_memory(device.type), worker_init_fn=_quiet_worker,
                      persistent_workers=workers > 0, collate_fn=_already_batched,
                      prefetch_factor=4 if workers else None,
                      # Its own generator: starting an epoch must not draw from the global RNG that dropout uses.
                      generator=torch.Generator().manual_seed(0))


def batches(data: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(indices, uint8 NHWC images) per batch; the first unreadable image stops everything with its one line."""
    for batch in data:
        errors = [e for e in batch["error"] if e]
        if errors:
            raise PipelineError(errors[0])
        yield batch["index"], batch["image"]


def to_model_input(images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                   device: torch.device) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW in channels_last memory (a permute, no copy) on ``device``."""
    images = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
    mean_t = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, -1, 1, 1)
    return images.sub_(mean_t).div_(std_t).contiguous(memory_format=torch.channels_last)


@dataclass(frozen=True)
class Feed:
    """How images reach a model: the device, batch size, decoding workers, the model's normalisation, and the
    autocast dtype (``precision``: ``bfloat16``, ``float16`` or None for float32; ``Feed.on`` decides it)."""

    device: torch.device
    batch_size: int
    workers: int | str
    mean: Sequence[float]
    std: Sequence[float]
    precision: str | None

    @classmethod
    def on(cls, device: torch.device, batch_size: int, workers: int | str, mean: Sequence[float],
           std: Sequence[float], amp: bool) -> "Feed":
        """A feed for ``device``, its autocast dtype chosen from what the device computes natively."""
        return cls(device, batch_size, workers, mean, std, autocast_dtype(device.type, gpu_capability(device), amp))

    def loader(self, dataset: Dataset, sampler=None, batch_size: int | None = None) -> DataLoader:
        return loader(dataset, batch_size or self.batch_size, self.workers, self.device, sampler)

    def inputs(self, data: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(indices, normalised model input on the device) per batch."""
        for indices, images in batches(data):
            if not torch.is_tensor(images):  # frames to make into images on the device (device_views, device_augment)
                images = data.dataset.to_images(images, indices, self.device)
            yield indices, to_model_input(images, self.mean, self.std, self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision where ``precision`` says; the same code on a CPU (tests run fp16 there) and a GPU."""
        if self.precision is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=getattr(torch, self.precision))


class FrameImages(Dataset):
    """Rows ``rows`` of the frame arrays (laid end to end), transformed to ``size x size`` uint8 HWC by
    ``transform`` (a view or an augmentation). ``seeds`` (one per item) reseeds a random transform per sample, so
    the augmentation an image gets does not depend on worker count or order. With ``regions``
    (pipeline/views/augment.py's REGIONS) each frame is cut to each region first and transformed region by region: a
    batch of n frames holds n x len(regions) images, a frame's regions one after another (what backbones.RegionNet
    expects)."""

    def __init__(self, arrays: Sequence[np.ndarray], rows: Sequence[int], transform: A.Compose, size: int,
                 seeds: Sequence[int] | None = None, regions: Sequence[str] = ("full",)):
        self.arrays, self.rows, self.transform, self.size, self.seeds = list(arrays), np.asarray(rows), transform, \
            size, seeds
        self.regions = list(regions)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])

    def __getitems__(self, indices: Sequence[int]) -> dict:
        """A whole batch in one uint8 tensor (no per-sample tensors to stack)."""
        frames = gather(self.arrays, self.rows[np.asarray(indices, dtype=np.int64)])
        per_frame = len(self.regions)
        images = torch.empty(len(indices) * per_frame, self.size, self.size, 3, dtype=torch.uint8)
        for i, (index, frame) in enumerate(zip(indices, frames)):
            if self.seeds is not None:
                self.transform.set_random_seed(int(self.seeds[index]))
            for j, part in enumerate(in_regions(frame, self.regions)):
                images[i * per_frame + j] = torch.from_numpy(self.transform(image=np.ascontiguousarray(part))["image"])
        return {"index": torch.as_tensor(indices), "image": images, "error": [""] * len(indices)}


class RawFrames(Dataset):
    """Rows of the frame arrays as they are, for the device paths (views and augmentation made on the GPU):
    the batch is ``{"frames": uint8 NHWC}`` and the subclass's ``to_images`` turns it into model images."""

    def __init__(self, arrays: Sequence[np.ndarray], rows: Sequence[int], size: int,
                 seeds: Sequence[int] | None = None):
        self.arrays, self.rows, self.size, self.seeds = list(arrays), np.asarray(rows), size, seeds

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])

    def __getitems__(self, indices: Sequence[int]) -> dict:
        frames = torch.from_numpy(gather(self.arrays, self.rows[np.asarray(indices, dtype=np.int64)]))
        return {"index": torch.as_tensor(indices), "image": {"frames": frames}, "error": [""] * len(indices)}
