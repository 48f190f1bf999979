"""The feature folder's format: one backbone's cached features, written by the features stage, read memory-mapped.

``data/features/<competition>/<backbone>/`` holds ``train_index.csv`` and
``test_index.csv`` (image ids in array row order), ``train_views.npy`` float16
[views, n_train, dim], ``test_views.npy`` [views, n_test, dim], ``train_aug.npy``
[passes, n_train, dim] when there are augmented passes, and ``features.json``
(how they were made). This module is the only place those names are spelled.
Kept apart from ``pipeline/stages/features.py`` so that the stages that only read
features (heads, ensemble) start without importing timm and torchvision.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

META = "features.json"


def index_file(split: str) -> str:
    return f"{split}_index.csv"


def views_file(split: str) -> str:
    return f"{split}_views.npy"


AUGMENTED = "train_aug.npy"


@dataclass(frozen=True)
class FeatureSet:
    """One backbone's cached features, memory-mapped."""

    train_ids: list[str]
    test_ids: list[str]
    train_views: np.ndarray  # [views, n_train, dim]
    test_views: np.ndarray  # [views, n_test, dim]
    train_aug: np.ndarray  # [passes, n_train, dim], passes may be 0
    meta: dict


def new_array(folder: Path, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A float16 ``.npy`` on disk to fill batch by batch (memory stays flat however many images)."""
    return np.lib.format.open_memmap(folder / name, mode="w+", dtype=np.float16, shape=shape)


def write_index(folder: Path, split: str, ids) -> None:
    pd.DataFrame({"img": list(ids)}).to_csv(folder / index_file(split), index=False)


def write_meta(folder: Path, meta: dict) -> None:
    (folder / META).write_text(json.dumps(meta, indent=2) + "\n")


def load_feature_set(folder: Path) -> FeatureSet:
    def array(name: str) -> np.ndarray:
        return np.load(folder / name, mmap_mode="r")

    def ids(split: str) -> list[str]:
        return list(pd.read_csv(folder / index_file(split), dtype=str, keep_default_na=False).img)

    meta = json.loads((folder / META).read_text())
    train_views = array(views_file("train"))
    train_aug = array(AUGMENTED) if meta["train_passes"] else np.zeros((0, *train_views.shape[1:]), np.float16)
    return FeatureSet(ids("train"), ids("test"), train_views, array(views_file("test")), train_aug, meta)
