"""The decoded-frame cache: every image of a run decoded once, at reduced size, into one uint8 array per split.

Decoding a JPEG costs a core 1.3-2.1 ms (docs/gpu.md); every view, epoch, fold and backbone used to pay it again.
The frames stage pays it once. ``data/frames/<competition>/`` holds ``train.npy`` and ``test.npy`` (uint8
[n, height, width, 3], NumPy's format, memory-mapped when read), ``train_index.csv`` / ``test_index.csv`` (img,
member: array row order) and ``frames.json`` (the frame shape and the size it serves). This module is the only
place those names are spelled. It needs no torch: the frames stage (and each of its decoding processes) starts
in a second; ``FrameImages`` and ``RawFrames`` in pipeline/views/image_data.py turn rows of a split into batches.

A frame is the image decoded at the largest libjpeg reduction (1/2, 1/4, 1/8) that keeps both sides at least
``frames.size`` (State Farm's 640x480 at 224: 320x240). That is the frame decoding for any image size whose
reduction is the same gave before the cache (121 to 240 px for State Farm), so views and augmentations at those
sizes are pixel for pixel what they were from the archive; smaller sizes now start from a larger frame. A
competition whose images differ in size (Dogs vs. Cats) has every frame resized to the first image's frame shape
(INTER_AREA), so that a split is one array; every view ends squashed to ``size x size`` anyway.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import pandas as pd

from pipeline.errors import PipelineError

META = "frames.json"
SPLITS = ("train", "test")


def array_file(split: str) -> str:
    return f"{split}.npy"


def index_file(split: str) -> str:
    return f"{split}_index.csv"


def fit_frame(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``image`` as a frame of ``shape`` (height, width): as it is when it fits, else resized (INTER_AREA)."""
    if image.shape[:2] == tuple(shape):
        return image
    return cv2.resize(image, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)


def frames_bytes(count: int, shape: tuple[int, int]) -> int:
    """The disk ``count`` frames of ``shape`` (height, width) take: the arrays' pixels (headers and indexes are
    small)."""
    return count * shape[0] * shape[1] * 3


def check_room(folder: Path, needed: int, name: Path) -> None:
    """Refuse, naming ``name``, to write ``needed`` bytes where the disk holds less: a memory-mapped array is made
    at full size at once (sparse) and the disk fills while the workers write, with a bus error in whichever
    process touches the first page that has no room."""
    stats = os.statvfs(folder)
    free = stats.f_bavail * stats.f_frsize
    if needed > free:
        raise PipelineError(f"{name}: the frame cache needs {needed:,} bytes ({needed / 2**30:.1f} GiB), "
                            f"{free:,} bytes free there; free some (`dvc gc -w` drops cached versions no commit "
                            f"uses) or lower frames.size")


def new_frames(folder: Path, split: str, count: int, shape: tuple[int, int]) -> np.ndarray:
    """A uint8 [count, height, width, 3] ``.npy`` on disk, filled in place by the decoding processes."""
    return np.lib.format.open_memmap(folder / array_file(split), mode="w+", dtype=np.uint8,
                                     shape=(count, *shape, 3))


def write_index(folder: Path, split: str, table: pd.DataFrame) -> None:
    table[["img", "member"]].to_csv(folder / index_file(split), index=False)


def write_meta(folder: Path, meta: dict) -> None:
    (folder / META).write_text(json.dumps(meta, indent=2) + "\n")


@dataclass(frozen=True)
class Frames:
    """A run's cached frames, memory-mapped: ``arrays[split]`` [n, h, w, 3] and each split's image ids."""

    arrays: dict[str, np.ndarray]
    ids: dict[str, pd.Index]
    meta: dict

    @property
    def both(self) -> list[np.ndarray]:
        """The train and test arrays, laid end to end by ``rows`` (pseudo-labelled test images train too)."""
        return [self.arrays["train"], self.arrays["test"]]

    def rows(self, split: str, ids: Sequence[str]) -> np.ndarray:
        """Rows of ``ids`` (image ids of ``split``) in ``both``: test rows come after every train row."""
        found = self.ids[split].get_indexer(list(ids))
        if (found < 0).any():
            missing = list(ids)[int(np.nonzero(found < 0)[0][0])]
            raise PipelineError(f"{self.meta.get('folder', 'data/frames')}: no frame of {split} image {missing!r}; "
                                f"`dvc repro frames` decodes the run's images again")
        return found + (len(self.arrays["train"]) if split == "test" else 0)


def load_frames(folder: Path) -> Frames:
    meta = {**json.loads((folder / META).read_text()), "folder": str(folder)}
    arrays = {split: np.load(folder / array_file(split), mmap_mode="r") for split in SPLITS}
    ids = {split: pd.Index(pd.read_csv(folder / index_file(split), dtype=str, keep_default_na=False).img)
           for split in SPLITS}
    return Frames(arrays, ids, meta)


def _read_rows(array: np.memmap, first: int, out: np.ndarray) -> None:
    """Rows ``first...`` of a memory-mapped ``.npy`` into ``out`` with one positioned read: the page cache copies
    them straight in, where indexing the map would fault in every 4 KiB page of every frame (3x slower)."""
    descriptor = _descriptors.get((array.filename, os.getpid()))
    if descriptor is None:  # one per file and process: a forked worker must not share the parent's
        descriptor = _descriptors[(array.filename, os.getpid())] = os.open(array.filename, os.O_RDONLY)
    row_bytes = int(np.prod(array.shape[1:]))
    buffer = memoryview(out.reshape(-1))
    done, offset = 0, array.offset + first * row_bytes
    while done < buffer.nbytes:
        read = os.preadv(descriptor, [buffer[done:]], offset + done)
        if read == 0:
            raise PipelineError(f"{array.filename}: shorter than its header says; `dvc repro -f frames` rebuilds it")
        done += read


_descriptors: dict[tuple[str, int], int] = {}


def gather(arrays: Sequence[np.ndarray], rows: np.ndarray) -> np.ndarray:
    """Frames of ``rows`` of the arrays laid end to end (train then test, for pseudo-labelled test images).
    Runs of consecutive rows that land in consecutive places are read in one go (a test-time pass reads its
    frames in order); plain arrays (not memory-mapped) are indexed."""
    frames = np.empty((len(rows), *arrays[0].shape[1:]), np.uint8)
    start = 0
    for array in arrays:
        places = np.nonzero((rows >= start) & (rows < start + len(array)))[0]
        local = rows[places] - start
        if not isinstance(array, np.memmap):
            frames[places] = array[local]
        else:  # split into runs where both the row and the place go up by one
            breaks = np.nonzero((np.diff(local) != 1) | (np.diff(places) != 1))[0] + 1
            for run_places, run_rows in zip(np.split(places, breaks), np.split(local, breaks)):
                if len(run_places):
                    _read_rows(array, int(run_rows[0]), frames[run_places[0]:run_places[-1] + 1])
        start += len(array)
    return frames
