"""The competition metric, computed exactly as Kaggle does, and small helpers around it."""
from __future__ import annotations

import numpy as np

KAGGLE_EPS = 1e-15


def kaggle_proba(proba: np.ndarray, eps: float = KAGGLE_EPS) -> np.ndarray:
    """Kaggle's rule: rescale each row to sum 1, then clip to [eps, 1 - eps]."""
    proba = np.asarray(proba, dtype=np.float64)
    return np.clip(proba / proba.sum(axis=1, keepdims=True), eps, 1 - eps)


def multiclass_log_loss(labels: np.ndarray, proba: np.ndarray, eps: float = KAGGLE_EPS) -> float:
    """Mean of -log p(true class); ``labels`` are column indices into ``proba``."""
    clipped = kaggle_proba(proba, eps)
    return float(-np.log(clipped[np.arange(len(labels)), np.asarray(labels)]).mean())


def accuracy(labels: np.ndarray, proba: np.ndarray) -> float:
    return float((np.asarray(proba).argmax(1) == np.asarray(labels)).mean())
