"""What the ensemble gets wrong, read off its nested out-of-fold predictions: log loss per group (State Farm: per
driver) and per class, a reliability diagram before and after calibration, and each class's worst images.

Pure functions on arrays the ensemble stage already holds (no model, no second pass over the data); the stage
writes them as DVC plots, so `dvc plots show` draws them and `dvc plots diff` compares experiments.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import pandas as pd

from pipeline.data.metrics import kaggle_proba

MAX_GROUPS = 40  # a bar per group: Dogs vs. Cats' near-duplicate groups number thousands, so the worst 40
RELIABILITY_BINS = 10
WORST_PER_CLASS = 8
THUMBNAIL = (192, 144)  # width, height: State Farm's 4:3
CAPTION_HEIGHT = 34


def row_losses(labels: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Each row's -log p(true class), clipped as Kaggle scores it."""
    return -np.log(kaggle_proba(proba)[np.arange(len(labels)), labels])


def loss_by(keys: Sequence[str], labels: np.ndarray, proba: np.ndarray, name: str,
            limit: int | None = None) -> list[dict]:
    """Log loss, accuracy and image count per value of ``keys`` (a group, a class), worst first."""
    rows = pd.DataFrame({name: np.asarray(keys, dtype=str), "loss": row_losses(labels, proba),
                         "correct": proba.argmax(1) == labels})
    table = rows.groupby(name).agg(log_loss=("loss", "mean"), accuracy=("correct", "mean"), images=("loss", "size"))
    table = table.sort_values("log_loss", ascending=False).head(limit)
    return [{name: key, "log_loss": round(float(row.log_loss), 4), "accuracy": round(float(row.accuracy), 4),
             "images": int(row.images)} for key, row in table.iterrows()]


def reliability(labels: np.ndarray, proba: np.ndarray, bins: int = RELIABILITY_BINS) -> list[dict]:
    """The top class's probability in equal-width bins: its mean in each bin against how often the top class was
    the true one. A calibrated model lies on the diagonal; above it, it is under-confident."""
    confidence, correct = proba.max(1), proba.argmax(1) == labels
    which = np.clip((confidence * bins).astype(int), 0, bins - 1)
    return [{"confidence": round(float(confidence[which == b].mean()), 4),
             "accuracy": round(float(correct[which == b].mean()), 4), "images": int((which == b).sum())}
            for b in range(bins) if (which == b).any()]


def worst_rows(labels: np.ndarray, proba: np.ndarray, per_class: int = WORST_PER_CLASS) -> dict[int, np.ndarray]:
    """Class index -> the rows of that true class with the highest loss, worst first."""
    losses = row_losses(labels, proba)
    worst = {}
    for label in np.unique(labels):
        rows = np.nonzero(labels == label)[0]
        worst[int(label)] = rows[np.argsort(-losses[rows], kind="stable")[:per_class]]
    return worst


def captions(ids: Sequence[str], groups: Sequence[str], labels: np.ndarray, proba: np.ndarray,
             classes: Sequence[str]) -> list[list[str]]:
    """Two lines per image: its id and group (driver), and true -> predicted class with the probability each got."""
    return [[f"{image} {group}".strip(), f"{classes[label]} {p[label]:.2f} -> {classes[p.argmax()]} {p.max():.2f}"]
            for image, group, label, p in zip(ids, groups, labels, proba)]


def gallery(frames: Sequence[np.ndarray], lines: Sequence[Sequence[str]]) -> np.ndarray:
    """Thumbnails side by side (uint8 RGB), each above its caption lines."""
    width, height = THUMBNAIL
    tiles = []
    for frame, text in zip(frames, lines):
        tile = np.zeros((height + CAPTION_HEIGHT, width, 3), np.uint8)
        tile[:height] = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
        for i, line in enumerate(text):
            cv2.putText(tile, line[:30], (3, height + 13 + 15 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (255, 255, 255),
                        1, cv2.LINE_AA)
        tiles.append(np.pad(tile, ((0, 0), (0, 2), (0, 0))))  # a dark seam between tiles
    return np.concatenate(tiles, axis=1)
