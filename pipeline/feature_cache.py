"""Reading one backbone's cached features (written by the features stage), memory-mapped.

Kept apart from ``pipeline/features.py`` so that the stages that only read
features (heads, ensemble) start without importing timm and torchvision.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class FeatureSet:
    """One backbone's cached features, memory-mapped."""

    train_ids: list[str]
    test_ids: list[str]
    train_views: np.ndarray  # [views, n_train, dim]
    test_views: np.ndarray  # [views, n_test, dim]
    train_aug: np.ndarray  # [passes, n_train, dim], passes may be 0
    meta: dict


def load_feature_set(folder: Path) -> FeatureSet:
    def array(name: str) -> np.ndarray:
        return np.load(folder / name, mmap_mode="r")

    meta = json.loads((folder / "features.json").read_text())
    train_aug = array("train_aug.npy") if meta["train_passes"] else np.zeros((0, *array("train_views.npy").shape[1:]),
                                                                             np.float16)
    def ids(name: str) -> list[str]:
        return list(pd.read_csv(folder / name, dtype=str, keep_default_na=False).img)

    return FeatureSet(ids("train_index.csv"), ids("test_index.csv"),
                      array("train_views.npy"), array("test_views.npy"), train_aug, meta)
