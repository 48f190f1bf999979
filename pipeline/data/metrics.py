"""The competition metrics, computed as Kaggle does (scikit-learn's where it has them), and helpers around them.

A ``Metric`` scores per-class probabilities [n, classes] against class indices. Some score probabilities (log
loss, ROC AUC), some a class (accuracy, micro F1, quadratic weighted kappa: ``decides``); a class comes from the
probabilities by ``decide``: the most probable one, or for kappa, whose classes are ordered grades, the expected
grade cut at thresholds fit out of fold (``fit_thresholds``), as APTOS 2019's winners did. The ensemble makes its
choices by ``loss`` (lower is better whatever the metric's direction) and reports ``score``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

# scikit-learn's metrics are imported where a metric needs them: every stage imports this module (through the
# competition's description) and sklearn.metrics costs ~1 s of a stage's start, which log loss never uses.

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


def expected_grade(proba: np.ndarray) -> np.ndarray:
    """The mean class index under ``proba``: an ordinal competition's grade, before thresholds cut it."""
    return np.asarray(proba, np.float64) @ np.arange(proba.shape[1])


def graded(proba: np.ndarray, thresholds) -> np.ndarray:
    """Class indices: the expected grade cut at ``thresholds`` (ascending, one fewer than classes)."""
    return np.searchsorted(np.sort(np.asarray(thresholds, np.float64)), expected_grade(proba), side="right")


def _kappa(labels: np.ndarray, predicted: np.ndarray) -> float:
    if len(np.unique(np.concatenate([labels, predicted]))) < 2:  # one grade everywhere: agreement undefined
        return float(np.all(labels == predicted))
    from sklearn.metrics import cohen_kappa_score
    return float(cohen_kappa_score(labels, predicted, weights="quadratic"))


def fit_thresholds(labels: np.ndarray, proba: np.ndarray, passes: int = 4, places: int = 64) -> tuple[float, ...]:
    """Thresholds on the expected grade maximising quadratic weighted kappa on these rows: the "optimised rounder"
    of APTOS 2019's top solutions, searched one threshold at a time (each moved to the best of ``places`` spots
    between its neighbours, a few passes, from the halfway points 0.5, 1.5, ...). Kappa is flat between two
    images' grades, where a simplex search from the halfway points can stall without moving at all."""
    grade, labels = expected_grade(proba), np.asarray(labels)
    thresholds = np.arange(proba.shape[1] - 1) + 0.5
    best = _kappa(labels, graded(proba, thresholds))
    for _ in range(passes):
        moved = False
        for i in range(len(thresholds)):
            low = thresholds[i - 1] if i else min(grade.min(), thresholds[0]) - 1e-6
            high = thresholds[i + 1] if i + 1 < len(thresholds) else max(grade.max(), thresholds[-1]) + 1e-6
            for spot in np.linspace(low, high, places + 2)[1:-1]:
                trial = thresholds.copy()
                trial[i] = spot
                kappa = _kappa(labels, np.searchsorted(trial, grade, side="right"))
                if kappa > best + 1e-12:
                    best, thresholds, moved = kappa, trial, True
        if not moved:
            break
    return tuple(float(t) for t in thresholds)


@dataclass(frozen=True)
class Metric:
    name: str
    key: str  # in metric names: cv_<key>, fold_<key>, public_<key>
    higher_is_better: bool
    score_fn: Callable[[np.ndarray, np.ndarray], float]  # (class indices, probabilities or predicted classes)
    decides: bool = False  # scores a class, not probabilities
    ordinal: bool = False  # the class is cut from the expected grade at fit thresholds
    binary: bool = False  # two classes, one probability column (the positive class's, column 1)

    def decide(self, proba: np.ndarray, thresholds=()) -> np.ndarray:
        """Class indices from probabilities: thresholds on the expected grade (ordinal), else the most probable."""
        if self.ordinal:
            return graded(proba, thresholds if len(thresholds) else np.arange(proba.shape[1] - 1) + 0.5)
        return np.asarray(proba).argmax(1)

    def score(self, labels: np.ndarray, proba: np.ndarray, thresholds=()) -> float:
        """The metric as Kaggle reports it, on per-class probabilities."""
        labels = np.asarray(labels)
        return self.score_fn(labels, self.decide(proba, thresholds) if self.decides else np.asarray(proba))

    def loss(self, labels: np.ndarray, proba: np.ndarray, thresholds=()) -> float:
        """Lower is better: what the ensemble's choices minimise. The log losses are minimised as the multi-class
        log loss on every column (the same number away from the clip, and the choices of before for Dogs vs. Cats)."""
        if self.key == "log_loss":
            return multiclass_log_loss(labels, proba)
        value = self.score(labels, proba, thresholds)
        return -value if self.higher_is_better else value

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"


def _roc_auc(labels: np.ndarray, proba: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score
    return float(roc_auc_score(labels == 1, proba[:, 1])) if len(np.unique(labels)) > 1 else 0.5


def _mean_column_auc(labels: np.ndarray, proba: np.ndarray) -> float:
    """Each class's ROC AUC of its own column, one against the rest, averaged (Plant Pathology 2020)."""
    from sklearn.metrics import roc_auc_score
    columns = [c for c in range(proba.shape[1]) if 0 < (labels == c).sum() < len(labels)]
    return float(np.mean([roc_auc_score(labels == c, proba[:, c]) for c in columns])) if columns else 0.5


def _micro_f1(labels: np.ndarray, predicted: np.ndarray) -> float:
    from sklearn.metrics import f1_score
    return float(f1_score(labels, predicted, average="micro"))


METRICS = {metric.name: metric for metric in (
    Metric("multiclass_log_loss", "log_loss", False, multiclass_log_loss),
    Metric("binary_log_loss", "log_loss", False, lambda y, p: binary_log_loss(y == 1, p[:, 1]), binary=True),
    Metric("accuracy", "accuracy", True, lambda y, c: float((y == c).mean()), decides=True),
    Metric("roc_auc", "roc_auc", True, _roc_auc, binary=True),
    Metric("mean_column_auc", "mean_column_auc", True, _mean_column_auc),
    Metric("quadratic_weighted_kappa", "kappa", True, _kappa, decides=True, ordinal=True),
    Metric("micro_f1", "micro_f1", True, _micro_f1, decides=True),
)}


def competition_metric(spec, labels: np.ndarray, proba: np.ndarray, thresholds=()) -> float:
    """The metric the competition's spec names, on per-class probabilities [n, classes]."""
    labels, proba = np.asarray(labels), np.asarray(proba)
    if spec.scorer.binary and spec.classes.index(spec.positive_class) == 0:  # the metric reads column 1
        labels, proba = 1 - labels, proba[:, ::-1]
    return spec.scorer.score(labels, proba, thresholds)
