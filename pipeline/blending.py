"""The ensemble's arithmetic: blends, temperature, test-neighbour smoothing and clipping, fit on out-of-fold
predictions, and scored by nested cross-validation.

A recipe (``BlendRecipe``) is four choices, each fit on out-of-fold rows only (never on the leaderboard):
1. blend: non-negative weights summing to one, for a mean of probabilities and for a mean of log-probabilities
   (a weighted geometric mean); the better one;
2. temperature: one scalar on the blend's log-probabilities (calibration);
3. neighbour smoothing: average each prediction with its k nearest neighbours among images of unseen drivers
   (the held-out fold / the test set), in one of several feature spaces; the space, k and the weight;
4. clipping to [eps, 1 - eps], eps from a grid.

Choices fit on the rows they are scored on flatter the score, so ``ensemble`` reports nested CV: each fold's
rows are predicted by a recipe fit on the other folds only. The recipe fit on every row makes the test
predictions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from sklearn.neighbors import NearestNeighbors

from pipeline.config import EnsembleParams
from pipeline.metrics import KAGGLE_EPS, kaggle_proba, multiclass_log_loss
from pipeline.progress import progress

NEIGHBOUR_WEIGHTS = np.linspace(0.0, 0.9, 10)
BLEND_SPACES = ("probability", "log")
Metric = Callable[[np.ndarray, np.ndarray], float]  # (labels, probabilities) -> loss


def blend(probas: list[np.ndarray], weights: np.ndarray, space: str = "probability") -> np.ndarray:
    """The weighted mean of probabilities, or of log-probabilities renormalised (a weighted geometric mean, the
    3rd-place State Farm blend): it trusts a model's confident "no" more."""
    if space == "probability":
        return np.tensordot(weights, np.stack(probas), 1)
    logs = np.tensordot(weights, np.log(np.clip(np.stack(probas), KAGGLE_EPS, 1.0)), 1)
    exp = np.exp(logs - logs.max(1, keepdims=True))
    return exp / exp.sum(1, keepdims=True)


def blend_weights(oofs: list[np.ndarray], labels: np.ndarray, space: str = "probability") -> np.ndarray:
    """Weights on the simplex minimising the out-of-fold log loss of the blend in ``space``."""
    if len(oofs) == 1:
        return np.ones(1)
    result = minimize(lambda w: multiclass_log_loss(labels, blend(oofs, w, space)),
                      np.full(len(oofs), 1 / len(oofs)), method="SLSQP", bounds=[(0.0, 1.0)] * len(oofs),
                      constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}])
    weights = np.clip(result.x, 0, None)
    return weights / weights.sum()


def with_temperature(proba: np.ndarray, temperature: float) -> np.ndarray:
    logits = np.log(kaggle_proba(proba)) / temperature
    logits -= logits.max(1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(1, keepdims=True)


def fit_temperature(proba: np.ndarray, labels: np.ndarray) -> float:
    return float(minimize_scalar(lambda t: multiclass_log_loss(labels, with_temperature(proba, t)),
                                 bounds=(0.05, 20.0), method="bounded").x)


def nearest(features: np.ndarray, groups: np.ndarray, k: int) -> np.ndarray:
    """Each row's k nearest (cosine) other rows within its group, nearest first; [n, k] row indices (a group
    smaller than k + 1 repeats its nearest)."""
    result = np.zeros((len(features), k), np.int64)
    with progress(total=len(features), desc=f"{k} nearest neighbours") as bar:
        for group in np.unique(groups):
            rows = np.nonzero(groups == group)[0]
            n = min(k + 1, len(rows))
            index = NearestNeighbors(n_neighbors=n, metric="cosine").fit(features[rows])
            for start in range(0, len(rows), 4096):  # in chunks: a bar that moves, memory that stays flat
                chunk = rows[start:start + 4096]
                found = rows[index.kneighbors(features[chunk])[1][:, 1:]] if n > 1 else chunk[:, None]
                result[chunk] = np.pad(found, ((0, 0), (0, k - found.shape[1])), mode="edge")
                bar.update(len(chunk))
    return result


def neighbour_mean(proba: np.ndarray, neighbours: np.ndarray, k: int) -> np.ndarray:
    """Mean prediction of each image's k nearest neighbours (the first k columns of ``nearest``)."""
    return proba[neighbours[:, :k]].mean(1)


def smooth(proba: np.ndarray, neighbours: np.ndarray, weight: float) -> np.ndarray:
    return (1 - weight) * proba + weight * neighbours


def clipped(proba: np.ndarray, eps: float) -> np.ndarray:
    """Clipped to [eps, 1 - eps] and renormalised, as the submission will be read."""
    proba = kaggle_proba(proba, eps)
    return proba / proba.sum(1, keepdims=True)


@dataclass(frozen=True)
class Predictions:
    """Every model's out-of-fold and test probabilities, the labels, and where neighbours are found."""

    oofs: list[np.ndarray]  # per model
    tests: list[list[np.ndarray]]  # per model, per fold: each fold model's own test probabilities
    labels: np.ndarray
    fold_of: np.ndarray
    spaces: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (train rows, test rows) to find neighbours in


@dataclass(frozen=True)
class BlendRecipe:
    """The four choices, as fit on some out-of-fold rows."""

    space: str  # "probability" or "log"
    weights: np.ndarray  # per model
    temperature: float
    neighbour_space: str | None  # None: no smoothing
    neighbours: int
    neighbour_weight: float
    clip: float
    by_space: dict = field(default_factory=dict)  # blend space -> its weights, for the report

    def as_dict(self, models: list[str]) -> dict:
        return {"models": list(models), "blend": self.space, "weights": self.weights.round(6).tolist(),
                "temperature": self.temperature, "neighbour_features": self.neighbour_space,
                "neighbours": self.neighbours, "neighbour_weight": self.neighbour_weight, "clip": self.clip}


def apply_steps(recipe: BlendRecipe, oofs: list[np.ndarray], near: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The out-of-fold predictions after each step of ``recipe`` (every row; neighbours within a row's fold)."""
    steps = {f"blend_{space}": blend(oofs, weights, space) for space, weights in recipe.by_space.items()}
    steps["blend"] = blend(oofs, recipe.weights, recipe.space)
    steps["calibrated"] = with_temperature(steps["blend"], recipe.temperature)
    smoothed = steps["calibrated"]
    if recipe.neighbour_space is not None:
        neighbours = neighbour_mean(smoothed, near[recipe.neighbour_space], recipe.neighbours)
        smoothed = steps["neighbours"] = smooth(smoothed, neighbours, recipe.neighbour_weight)
    steps["final"] = clipped(smoothed, recipe.clip)
    return steps


def fit_recipe(oofs: list[np.ndarray], labels: np.ndarray, rows: np.ndarray, near: dict[str, np.ndarray],
               settings: EnsembleParams) -> BlendRecipe:
    """Every choice fit on the out-of-fold rows ``rows`` (a mask of whole folds) only."""
    fit_oofs, fit_labels = [oof[rows] for oof in oofs], labels[rows]
    by_space = {space: blend_weights(fit_oofs, fit_labels, space) for space in BLEND_SPACES}
    space = min(BLEND_SPACES, key=lambda s: multiclass_log_loss(fit_labels, blend(fit_oofs, by_space[s], s)))
    proba = blend(oofs, by_space[space], space)
    temperature = fit_temperature(proba[rows], fit_labels) if settings.calibrate else 1.0
    proba = with_temperature(proba, temperature)
    chosen, k, weight = None, 0, 0.0
    if near and settings.neighbours:
        losses = {(name, k, float(w)): multiclass_log_loss(fit_labels, smooth(proba, neighbour_mean(proba, found, k),
                                                                              w)[rows])
                  for name, found in near.items() for k in settings.neighbours for w in NEIGHBOUR_WEIGHTS}
        chosen, k, weight = min(losses, key=losses.get)
        proba = smooth(proba, neighbour_mean(proba, near[chosen], k), weight)
    clip = min(settings.clip_grid, key=lambda eps: multiclass_log_loss(fit_labels, clipped(proba[rows], eps)))
    return BlendRecipe(space, by_space[space], temperature, chosen, k, weight, clip, by_space)


def ensemble(predictions: Predictions, settings: EnsembleParams, metric: Metric) -> tuple:
    """The pure core: (nested out-of-fold probabilities, test probabilities, recipe, report, steps).

    Nested CV: fold k's rows are predicted by the recipe fit on the other folds, and every step's report
    (``blend/cv_log_loss``, ``calibrated/...``, ``neighbours/...``, ``cv_log_loss``) scores those predictions.
    ``in_sample/cv_log_loss`` is the recipe fit on every row scored on the same rows: how much choosing on the
    scored rows would have flattered. That all-rows recipe is applied to each fold's test predictions, which are
    then combined across folds (a geometric mean); held-out images find neighbours within their own fold (drivers
    unseen by its models), test images within the test set. Steps are fit on multi-class log loss and reported in
    the competition's metric. ``steps`` holds the nested out-of-fold probabilities after each step (``blend``,
    ``calibrated``, ..., ``final``; in-sample with one fold), for error analysis.
    """
    p = predictions
    near = {name: nearest(train, p.fold_of, max(settings.neighbours)) for name, (train, _) in p.spaces.items()
            } if settings.neighbours else {}
    nested: dict[str, np.ndarray] = {}
    folds = np.unique(p.fold_of)
    for fold in folds if len(folds) > 1 else ():  # one fold has no other folds to fit on: no nested score
        inside = p.fold_of == fold
        steps = apply_steps(fit_recipe(p.oofs, p.labels, ~inside, near, settings), p.oofs, near)
        for name, proba in steps.items():
            nested.setdefault(name, np.zeros_like(proba))[inside] = proba[inside]
    recipe = fit_recipe(p.oofs, p.labels, np.ones(len(p.labels), bool), near, settings)
    in_sample = apply_steps(recipe, p.oofs, near)
    report = {f"{name}/cv_log_loss": metric(p.labels, proba) for name, proba in nested.items() if name != "final"}
    report["in_sample/cv_log_loss"] = metric(p.labels, in_sample["final"])
    oof = nested.get("final", in_sample["final"])
    report["cv_log_loss"] = metric(p.labels, oof)
    # The recipe was fit on out-of-fold predictions, each made by one fold's models: apply it to each fold's test
    # predictions the same way, then combine the folds (a geometric mean, as for a blend).
    per_fold = [with_temperature(blend([tests[k] for tests in p.tests], recipe.weights, recipe.space),
                                 recipe.temperature) for k in range(len(p.tests[0]))]
    test = blend(per_fold, np.full(len(per_fold), 1 / len(per_fold)), "log")
    if recipe.neighbour_space is not None and recipe.neighbour_weight > 0:  # a weight of 0 needs no search
        test_near = nearest(p.spaces[recipe.neighbour_space][1], np.zeros(len(test)), recipe.neighbours)
        test = smooth(test, neighbour_mean(test, test_near, recipe.neighbours), recipe.neighbour_weight)
    return oof, clipped(test, recipe.clip), recipe, report, nested or in_sample
