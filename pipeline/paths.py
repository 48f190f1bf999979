"""Every path the pipeline reads or writes, built from the competition name.

dvc.yaml declares the same paths with ``${competition}``; nothing else invents one.
Paths are relative to the repository root, where DVC runs every stage.
"""
from __future__ import annotations

from pathlib import Path

DATA = Path("data")
SUBMISSIONS = Path("submissions")
METRICS = Path("metrics")


def raw_dir(competition: str) -> Path:
    """The competition's files as Kaggle serves them: the image zip and the CSVs."""
    return DATA / "raw" / competition


def sample_dir(competition: str) -> Path:
    """The run's images: ``train.csv`` (img, label, group, member) and ``test.csv`` (img, member), all of them
    or a sample of whole groups (pipeline/stages/sample.py)."""
    return DATA / "sample" / competition


def folds_csv(competition: str) -> Path:
    """Train images with their fold: img, label, group (State Farm: the driver), fold."""
    return DATA / "folds" / competition / "folds.csv"


def frames_dir(competition: str) -> Path:
    """Every image of the run decoded once, one uint8 array per split (file names: pipeline/data/frames.py)."""
    return DATA / "frames" / competition


def features_dir(competition: str, backbone: str) -> Path:
    """One backbone's cached pooled features (file names: pipeline/training/feature_cache.py)."""
    return DATA / "features" / competition / backbone


def predictions_dir(competition: str, model: str) -> Path:
    """A model's out-of-fold and test probabilities, one ``fold<k>/`` per fold (pipeline/data/predictions.py)."""
    return DATA / "predictions" / competition / model


def fold_name(fold: int) -> str:
    return f"fold{fold}"


def fold_dir(competition: str, model: str, fold: int) -> Path:
    """One fold's predictions of one model: ``oof.csv``, ``test.csv`` (and a fine-tuned net's embeddings)."""
    return predictions_dir(competition, model) / fold_name(fold)


def checkpoint_dir(competition: str, model: str, fold: int) -> Path:
    """Checkpoints of one fine-tuned model's fold: ``last.pt`` to resume, ``final.pt``."""
    return Path("models") / competition / model / fold_name(fold)


def ensemble_dir(competition: str) -> Path:
    """The blended, calibrated out-of-fold and test probabilities and how they were made."""
    return DATA / "ensemble" / competition


def metrics_dir(stage: str) -> Path:
    """DVCLive's folder for one stage: metrics.json and plots/ (declared in dvc.yaml)."""
    return METRICS / stage
