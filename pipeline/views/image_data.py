"""Batches to the model: datasets over the frame cache (pipeline/data/frames.py), DataLoaders, normalisation.

Datasets hand over uint8 HWC batches (a view or an augmentation of cached frames, made on the CPU) or the frames
themselves with a ``to_images`` that makes them on the device; float conversion and normalisation happen on the
model's device, where they are nearly free. An item that cannot be made does not raise inside a worker (the
DataLoader would wrap the message in a traceback); it travels as an ``error`` string and ``batches`` raises it
as one line.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Callable, Iterator, NamedTuple, Sequence

import pipeline.offline  # noqa: F401  (first: it keeps albumentations from calling PyPI)
import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.compute.cores import share
from pipeline.compute.devices import device_memory, gpu_capability
from pipeline.compute.machine import (autocast_dtype, frames_resident, loader_workers, main_threads, pads_prediction,
                                      pin_memory)
from pipeline.data.frames import Frames, gather
from pipeline.errors import PipelineError
from pipeline.views.augment import in_regions


def _already_batched(batch: dict) -> dict:
    return batch


def _quiet_worker(_: int) -> None:
    cv2.setNumThreads(1)  # each worker is one decoding core; OpenCV's own pool would oversubscribe


class Draw(NamedTuple):
    """One training item of one epoch, as ``EpochDraws`` hands it to a dataset: the item, the seed of its
    augmentation and the epoch's image size."""

    index: int
    seed: int
    size: int


class EpochDraws(torch.utils.data.Sampler):
    """Each epoch's shuffle of a training set, every item with its augmentation seed and the epoch's size: what
    reaches the workers of a loader built once per fold (persistent workers never see a dataset changed after they
    started). ``order(epoch)`` gives the epoch's item order (a per-epoch shuffle, or a rank's share under DDP);
    the seeds are per (seed, fold, epoch, item), so a resumed run and any worker count see the same images."""

    def __init__(self, order: Callable[[int], Sequence[int]], n: int, seed: int, fold: int, sizes: Sequence[int]):
        self.order, self.n, self.seed, self.fold, self.sizes = order, n, seed, fold, list(sizes)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.order(self.epoch))

    def __iter__(self) -> Iterator[Draw]:
        seeds = np.random.SeedSequence([self.seed, self.fold, self.epoch]).generate_state(self.n)
        size = self.sizes[self.epoch]
        return iter([Draw(int(i), int(seeds[i]), size) for i in self.order(self.epoch)])


def _drawn(items: Sequence[int | Draw], seeds: Sequence[int] | None, size: int) -> tuple[np.ndarray, list, int]:
    """(indices, a seed per item or None each, the size) of a batch given as indices or as ``Draw``s."""
    if len(items) and isinstance(items[0], Draw):
        return np.array([d.index for d in items], np.int64), [d.seed for d in items], items[0].size
    indices = np.asarray(items, dtype=np.int64)
    return indices, [None if seeds is None else int(seeds[i]) for i in indices], size


def loader(dataset: Dataset, batch_size: int, workers: int | str, device: torch.device, sampler=None,
           drop_last: bool = False) -> DataLoader:
    """Batches in the dataset's order (or the sampler's), assembled in the workers, pinned for a GPU. Workers and
    the main process's threads follow this process's share of the cores (pipeline/compute/machine.py)."""
    cores = share()
    resident = getattr(dataset, "resident", False)  # frames on the device already: nothing for a worker to do
    workers = 0 if resident else loader_workers(workers, device.type, cores)
    torch.set_num_threads(main_threads(device.type, cores, workers))
    # One decoding thread per process, set before workers fork: OpenCV's thread pool does not survive a fork
    # (a forked worker deadlocks in it), and parallelism comes from the workers anyway.
    cv2.setNumThreads(1)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last,
                      pin_memory=pin_memory(device.type) and not resident, worker_init_fn=_quiet_worker,
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


def to_model_input(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW in channels_last memory (a permute, no copy) on ``device``; ``mean`` and
    ``std`` [1, 3, 1, 1] already there (made once per feed: a tensor built from a list each batch is a host copy)."""
    images = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
    return images.sub_(mean).div_(std).contiguous(memory_format=torch.channels_last)


def padded(inputs: torch.Tensor, rows: int) -> torch.Tensor:
    """``inputs`` with zero images after them up to ``rows``: a prediction's last batch the shape of every other
    (BatchNorm is in eval mode there, so the padding changes no other row; cut it off the outputs)."""
    if len(inputs) >= rows:
        return inputs
    return torch.cat([inputs, inputs.new_zeros((rows - len(inputs), *inputs.shape[1:]))]).contiguous(
        memory_format=torch.channels_last)


@dataclass(frozen=True)
class Feed:
    """How images reach a model: the device, batch size, decoding workers, the model's normalisation, the
    autocast dtype (``precision``: ``bfloat16``, ``float16`` or None for float32) and whether predictions pad their
    last batch to a full one's shape (``Feed.on`` decides both from the device)."""

    device: torch.device
    batch_size: int
    workers: int | str
    mean: Sequence[float]
    std: Sequence[float]
    precision: str | None
    pad_predictions: bool = False

    @classmethod
    def on(cls, device: torch.device, batch_size: int, workers: int | str, mean: Sequence[float],
           std: Sequence[float], amp: bool) -> "Feed":
        """A feed for ``device``, its autocast dtype chosen from what the device computes natively."""
        return cls(device, batch_size, workers, mean, std, autocast_dtype(device.type, gpu_capability(device), amp),
                   pads_prediction(device.type))

    def loader(self, dataset: Dataset, sampler=None, batch_size: int | None = None,
               drop_last: bool = False) -> DataLoader:
        return loader(dataset, batch_size or self.batch_size, self.workers, self.device, sampler, drop_last)

    @functools.cached_property
    def normalisation(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's mean and std on the device, once."""
        return tuple(torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1).to(self.device)
                     for v in (self.mean, self.std))

    def inputs(self, data: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(indices, normalised model input on the device) per batch."""
        mean, std = self.normalisation
        for indices, images in batches(data):
            if not torch.is_tensor(images):  # frames to make into images on the device (device_views, device_augment)
                images = data.dataset.to_images(images, indices, self.device)
            yield indices, to_model_input(images, mean, std, self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision where ``precision`` says; the same code on a CPU (tests run fp16 there) and a GPU."""
        if self.precision is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=getattr(torch, self.precision))


class FrameImages(Dataset):
    """Rows ``rows`` of the frame arrays (laid end to end), transformed to ``size x size`` uint8 HWC by
    ``transform`` (a view or an augmentation). ``seeds`` (one per item), or the seed each ``Draw`` carries, reseeds a
    random transform per sample, so the augmentation an image gets does not depend on worker count or order; a
    ``Draw`` of another size is transformed by ``resized(size)`` (progressive resizing). With ``regions``
    (pipeline/views/augment.py's REGIONS) each frame is cut to each region first and transformed region by region: a
    batch of n frames holds n x len(regions) images, a frame's regions one after another (what backbones.RegionNet
    expects)."""

    def __init__(self, arrays: Sequence[np.ndarray], rows: Sequence[int], transform: A.Compose, size: int,
                 seeds: Sequence[int] | None = None, regions: Sequence[str] = ("full",),
                 resized: Callable[[int], A.Compose] | None = None):
        self.arrays, self.rows, self.transform, self.size, self.seeds = list(arrays), np.asarray(rows), transform, \
            size, seeds
        self.regions, self.resized, self.transforms = list(regions), resized, {size: transform}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])

    def __getitems__(self, items: Sequence[int | Draw]) -> dict:
        """A whole batch in one uint8 tensor (no per-sample tensors to stack)."""
        indices, seeds, size = _drawn(items, self.seeds, self.size)
        if size not in self.transforms:
            self.transforms[size] = self.resized(size)
        transform = self.transforms[size]
        frames = gather(self.arrays, self.rows[indices])
        per_frame = len(self.regions)
        images = torch.empty(len(indices) * per_frame, size, size, 3, dtype=torch.uint8)
        for i, (seed, frame) in enumerate(zip(seeds, frames)):
            if seed is not None:
                transform.set_random_seed(seed)
            for j, part in enumerate(in_regions(frame, self.regions)):
                images[i * per_frame + j] = torch.from_numpy(transform(image=np.ascontiguousarray(part))["image"])
        return {"index": torch.as_tensor(indices), "image": images, "error": [""] * len(indices)}


@dataclass(frozen=True)
class ResidentFrames:
    """Rows of the frame arrays uploaded once to a device (``frames``, uint8 [n, h, w, 3] there; ``rows``, the
    sorted frame-array rows they are): a batch is an index into them, made where the model is, with no worker and no
    copy (pipeline/compute/machine.py's ``frames_resident`` decides when they fit)."""

    frames: torch.Tensor
    rows: np.ndarray

    @classmethod
    def upload(cls, arrays: Sequence[np.ndarray], rows: Sequence[int], device: torch.device,
               chunk: int = 256) -> "ResidentFrames":
        """``rows`` of the arrays (laid end to end) onto ``device``, ``chunk`` frames at a time through one host
        buffer (pinned for a GPU): the memory-mapped cache is never read into host memory whole."""
        rows = np.unique(np.asarray(rows, dtype=np.int64))
        shape = arrays[0].shape[1:]
        frames = torch.empty((len(rows), *shape), dtype=torch.uint8, device=device)
        buffer = torch.empty((min(chunk, len(rows)), *shape), dtype=torch.uint8, pin_memory=pin_memory(device.type))
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            buffer[:len(part)].copy_(torch.from_numpy(gather(arrays, part)))
            frames[start:start + len(part)].copy_(buffer[:len(part)])  # blocking: the buffer is reused next
        return cls(frames, rows)

    def take(self, rows: np.ndarray) -> torch.Tensor:
        """The frames of frame-array ``rows`` (all uploaded), on the device."""
        return self.frames[torch.from_numpy(np.searchsorted(self.rows, rows)).to(self.frames.device)]


class RawFrames(Dataset):
    """Rows of the frame arrays as they are, for the device paths (views and augmentation made on the GPU):
    the batch is ``{"frames": uint8 NHWC}`` and the subclass's ``to_images`` turns it into model images. ``arrays``
    may be ``ResidentFrames`` already on the device: batches are then indexed there, in the main process."""

    def __init__(self, arrays: Sequence[np.ndarray] | ResidentFrames, rows: Sequence[int], size: int,
                 seeds: Sequence[int] | None = None):
        self.arrays = arrays if isinstance(arrays, ResidentFrames) else list(arrays)
        self.rows, self.size, self.seeds = np.asarray(rows), size, seeds

    @property
    def resident(self) -> bool:
        return isinstance(self.arrays, ResidentFrames)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])

    def __getitems__(self, items: Sequence[int | Draw]) -> dict:
        """The batch's frames, with the seed of its first item (or its first index) and its size: a batch is
        augmented on the device with one draw of parameters per image from that seed."""
        indices, seeds, size = _drawn(items, self.seeds, self.size)
        rows = self.rows[indices]
        frames = self.arrays.take(rows) if self.resident else torch.from_numpy(gather(self.arrays, rows))
        seed = seeds[0] if seeds and seeds[0] is not None else int(indices[0]) if len(indices) else 0
        return {"index": torch.as_tensor(indices), "image": {"frames": frames, "seed": seed, "size": size},
                "error": [""] * len(indices)}


def made_where(setting: str, device: torch.device) -> str:
    """Where images are made (``features.views_on``, ``finetune.augment_on``): ``auto`` is on the device when it is a
    GPU, else on the CPU; ``cpu`` and ``device`` as they say."""
    return ("device" if device.type == "cuda" else "cpu") if setting == "auto" else setting


def frames_on(frames: Frames, made_on: str, device: torch.device) -> list[np.ndarray] | ResidentFrames:
    """The frames as a fine-tuning fold's batches read them: every frame uploaded once to ``device`` where its batches
    are made there (``made_on``: ``device``) and the frames fit beside training (``frames_resident``); else the
    memory-mapped arrays, read by the loader's workers."""
    arrays = frames.both
    if made_on != "device" or not frames_resident(sum(a.nbytes for a in arrays), device_memory(device)):
        return arrays
    return ResidentFrames.upload(arrays, np.arange(sum(len(a) for a in arrays)), device)
