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


def binary_log_loss(is_positive: np.ndarray, p_positive: np.ndarray, eps: float = KAGGLE_EPS) -> float:
    """Kaggle's binary log loss on one probability column (Dogs vs. Cats: P(dog)), clipped to [eps, 1 - eps]."""
    p = np.clip(np.asarray(p_positive, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(is_positive, dtype=bool)
    return float(-np.where(y, np.log(p), np.log(1 - p)).mean())


def competition_metric(spec, labels: np.ndarray, proba: np.ndarray) -> float:
    """The metric the competition's spec names, on per-class probabilities [n, classes]."""
    if spec.metric == "binary_log_loss":
        positive = spec.classes.index(spec.positive_class)
        return binary_log_loss(np.asarray(labels) == positive, np.asarray(proba)[:, positive])
    return multiclass_log_loss(labels, proba)
