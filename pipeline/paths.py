"""Every path the pipeline reads or writes, built from the competition name.

dvc.yaml declares the same paths with ``${competition}``; nothing else invents one.
Paths are relative to the repository root, where DVC runs every stage.
"""
from __future__ import annotations

from pathlib import Path

DATA = Path("data")


def raw_dir(competition: str) -> Path:
    """The competition's files as Kaggle serves them: the image zip and the CSVs."""
    return DATA / "raw" / competition


def folds_csv(competition: str) -> Path:
    """Train images with their driver-grouped fold: img, classname, subject, fold."""
    return DATA / "folds" / competition / "driver_folds.csv"


def features_dir(competition: str, backbone: str) -> Path:
    """One backbone's cached pooled features: train/test arrays, their index tables, features.json."""
    return DATA / "features" / competition / backbone
