"""The ensemble's arithmetic: blends, calibration, test-neighbour smoothing and clipping, fit on out-of-fold
predictions, and scored by nested cross-validation.

A recipe (``BlendRecipe``) is four choices, each fit on out-of-fold rows only (never on the leaderboard):
1. blend: non-negative weights summing to one, for a mean of probabilities and for a mean of log-probabilities
   (a weighted geometric mean); the better one;
2. calibration of the blend's log-probabilities, one of ``ensemble.calibration``: none, temperature (one scalar)
   or vector scaling (a scale and a bias per class). A fitted calibration always looks better on the rows it was
   fit on, so the choice is made by cross-validation within those rows: each of their folds is calibrated by the
   others' fit (held-out drivers differ: on real State Farm photos a temperature fit on some drivers made others
   worse);
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

from pipeline.config import EnsembleParams
from pipeline.data.metrics import KAGGLE_EPS, METRICS, Metric, fit_thresholds, graded, kaggle_proba, multiclass_log_loss
from pipeline.data.neighbours import nearest

NEIGHBOUR_WEIGHTS = np.linspace(0.0, 0.9, 10)
BLEND_SPACES = ("probability", "log")
CALIBRATIONS = ("none", "temperature", "vector")
Score = Callable[[np.ndarray, np.ndarray], float]  # (labels, probabilities) -> the competition's metric
LOG_LOSS = METRICS["multiclass_log_loss"]


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


def rescaled(proba: np.ndarray, scale: np.ndarray | float, bias: np.ndarray | float = 0.0) -> np.ndarray:
    """softmax(scale * log p + bias): every calibration here is this, with per-class or shared scale and bias."""
    logits = np.log(kaggle_proba(proba)) * scale + bias
    logits -= logits.max(1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(1, keepdims=True)


def with_temperature(proba: np.ndarray, temperature: float) -> np.ndarray:
    return rescaled(proba, 1.0 / temperature)


def fit_temperature(proba: np.ndarray, labels: np.ndarray) -> float:
    return float(minimize_scalar(lambda t: multiclass_log_loss(labels, with_temperature(proba, t)),
                                 bounds=(0.05, 20.0), method="bounded").x)


def fit_vector_scaling(proba: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scale, bias) per class minimising the log loss of ``rescaled`` (Guo et al. 2017's vector scaling, on
    log-probabilities), by L-BFGS with the exact gradient; starts from no change."""
    logs, classes = np.log(kaggle_proba(proba)), proba.shape[1]
    onehot = np.eye(classes)[labels]

    def loss_and_gradient(theta: np.ndarray) -> tuple[float, np.ndarray]:
        scale, bias = theta[:classes], theta[classes:]
        q = rescaled(proba, scale, bias)
        residual = (np.clip(q, KAGGLE_EPS, None) - onehot) / len(labels)  # d loss / d logits
        loss = multiclass_log_loss(labels, q)
        return loss, np.concatenate([(residual * logs).sum(0), residual.sum(0)])

    result = minimize(loss_and_gradient, np.concatenate([np.ones(classes), np.zeros(classes)]), jac=True,
                      method="L-BFGS-B", bounds=[(0.05, 20.0)] * classes + [(-20.0, 20.0)] * classes)
    return result.x[:classes], result.x[classes:]


@dataclass(frozen=True)
class Calibration:
    """softmax(scale * log p + bias), as one of ``CALIBRATIONS`` fit it."""

    name: str
    scale: np.ndarray  # per class
    bias: np.ndarray  # per class

    def __call__(self, proba: np.ndarray) -> np.ndarray:
        return proba if self.name == "none" else rescaled(proba, self.scale, self.bias)

    @property
    def temperature(self) -> float:
        """The temperature this calibration amounts to when its scale is shared (1 for none)."""
        return float(1.0 / self.scale.mean())


def fit_calibration(name: str, proba: np.ndarray, labels: np.ndarray) -> Calibration:
    classes = proba.shape[1]
    if name == "none":
        return Calibration(name, np.ones(classes), np.zeros(classes))
    if name == "temperature":
        return Calibration(name, np.full(classes, 1.0 / fit_temperature(proba, labels)), np.zeros(classes))
    if name == "vector":
        return Calibration(name, *fit_vector_scaling(proba, labels))
    raise ValueError(f"calibration {name!r}: one of {CALIBRATIONS}")


def calibration_losses(proba: np.ndarray, labels: np.ndarray, fold_of: np.ndarray,
                       candidates: list[str], metric: Metric = LOG_LOSS) -> dict[str, float]:
    """Each candidate's cross-validated loss (``metric.loss``) over these rows: every fold calibrated by the fit
    on the other folds (a fit minimises log loss, whatever the metric). Empty with fewer than two folds."""
    folds = np.unique(fold_of)
    if len(folds) < 2:
        return {}
    losses = {}
    for name in candidates:
        held_out = np.zeros_like(proba)
        for fold in folds:
            inside = fold_of == fold
            held_out[inside] = fit_calibration(name, proba[~inside], labels[~inside])(proba[inside])
        losses[name] = metric.loss(labels, held_out)
    return losses


def choose_calibration(proba: np.ndarray, labels: np.ndarray, fold_of: np.ndarray,
                       candidates: list[str], metric: Metric = LOG_LOSS) -> tuple[Calibration, dict[str, float]]:
    """The candidate with the lowest cross-validated loss (the first listed when one candidate or one fold: a fit
    cannot be judged on the rows it was fit on), fit on every row; and each candidate's cross-validated loss."""
    losses = calibration_losses(proba, labels, fold_of, candidates, metric) if len(candidates) > 1 else {}
    name = min(losses, key=losses.get) if losses else candidates[0]
    return fit_calibration(name, proba, labels), losses


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
    calibration: Calibration
    neighbour_space: str | None  # None: no smoothing
    neighbours: int
    neighbour_weight: float
    clip: float
    by_space: dict = field(default_factory=dict)  # blend space -> its weights, for the report
    calibration_losses: dict = field(default_factory=dict)  # candidate -> its cross-validated loss, for the report
    thresholds: tuple = ()  # an ordinal metric's cuts of the expected grade (pipeline/data/metrics.py); () for the others

    def as_dict(self, models: list[str]) -> dict:
        """blend.json: every number the test prediction uses, in full (``from_dict`` gives the same recipe back:
        a Kaggle notebook predicts with it, pipeline/kaggle/inference.py); the weights rounded too, for reading."""
        return {"models": list(models), "blend": self.space, "weights": self.weights.round(6).tolist(),
                "calibration": self.calibration.name, "temperature": self.calibration.temperature,
                "calibration_scale": self.calibration.scale.round(6).tolist(),
                "calibration_bias": self.calibration.bias.round(6).tolist(),
                "calibration_cv_log_loss": self.calibration_losses, "neighbour_features": self.neighbour_space,
                "neighbours": self.neighbours, "neighbour_weight": self.neighbour_weight, "clip": self.clip,
                **({"thresholds": list(self.thresholds)} if self.thresholds else {}),
                "exact": {"weights": self.weights.tolist(), "calibration_scale": self.calibration.scale.tolist(),
                          "calibration_bias": self.calibration.bias.tolist()}}

    @classmethod
    def from_dict(cls, saved: dict) -> "BlendRecipe":
        exact = saved["exact"]
        calibration = Calibration(saved["calibration"], np.array(exact["calibration_scale"]),
                                  np.array(exact["calibration_bias"]))
        return cls(saved["blend"], np.array(exact["weights"]), calibration, saved["neighbour_features"],
                   saved["neighbours"], saved["neighbour_weight"], saved["clip"],
                   calibration_losses=saved["calibration_cv_log_loss"], thresholds=tuple(saved.get("thresholds", ())))


def apply_steps(recipe: BlendRecipe, oofs: list[np.ndarray], near: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The out-of-fold predictions after each step of ``recipe`` (every row; neighbours within a row's fold)."""
    steps = {f"blend_{space}": blend(oofs, weights, space) for space, weights in recipe.by_space.items()}
    steps["blend"] = blend(oofs, recipe.weights, recipe.space)
    steps["calibrated"] = recipe.calibration(steps["blend"])
    smoothed = steps["calibrated"]
    if recipe.neighbour_space is not None:
        neighbours = neighbour_mean(smoothed, near[recipe.neighbour_space], recipe.neighbours)
        smoothed = steps["neighbours"] = smooth(smoothed, neighbours, recipe.neighbour_weight)
    steps["final"] = clipped(smoothed, recipe.clip)
    if recipe.thresholds:  # the class the submission will hold, as a one-hot row (its expected grade is the class)
        steps["decided"] = np.eye(steps["final"].shape[1])[graded(steps["final"], recipe.thresholds)]
    return steps


def fit_recipe(oofs: list[np.ndarray], labels: np.ndarray, fold_of: np.ndarray, rows: np.ndarray,
               near: dict[str, np.ndarray], settings: EnsembleParams, metric: Metric = LOG_LOSS) -> BlendRecipe:
    """Every choice fit on the out-of-fold rows ``rows`` (a mask of whole folds) only. Weights, temperatures and
    scales minimise log loss (smooth, and proper for every metric); which blend space, calibration, neighbours
    and clip win is ``metric.loss``'s call, and an ordinal metric's thresholds are fit last."""
    fit_oofs, fit_labels = [oof[rows] for oof in oofs], labels[rows]
    by_space = {space: blend_weights(fit_oofs, fit_labels, space) for space in BLEND_SPACES}
    space = min(BLEND_SPACES, key=lambda s: metric.loss(fit_labels, blend(fit_oofs, by_space[s], s)))
    proba = blend(oofs, by_space[space], space)
    calibration, calibration_cv = choose_calibration(proba[rows], fit_labels, fold_of[rows], settings.calibration,
                                                     metric)
    proba = calibration(proba)
    chosen, k, weight = None, 0, 0.0
    if near and settings.neighbours:
        losses = {(name, k, float(w)): metric.loss(fit_labels, smooth(proba, neighbour_mean(proba, found, k), w)[rows])
                  for name, found in near.items() for k in settings.neighbours for w in NEIGHBOUR_WEIGHTS}
        chosen, k, weight = min(losses, key=losses.get)
        proba = smooth(proba, neighbour_mean(proba, near[chosen], k), weight)
    clip = min(settings.clip_grid, key=lambda eps: metric.loss(fit_labels, clipped(proba[rows], eps)))
    thresholds = fit_thresholds(fit_labels, clipped(proba[rows], clip)) if metric.ordinal else ()
    return BlendRecipe(space, by_space[space], calibration, chosen, k, weight, clip, by_space, calibration_cv,
                       thresholds)


def ensemble(predictions: Predictions, settings: EnsembleParams, score: Score, metric: Metric = LOG_LOSS) -> tuple:
    """The pure core: (nested out-of-fold probabilities, test probabilities, recipe, report, steps).

    Nested CV: fold k's rows are predicted by the recipe fit on the other folds, and every step's report
    (``blend/cv_log_loss``, ``calibrated/...``, ``neighbours/...``, ``cv_log_loss``) scores those predictions.
    ``in_sample/cv_log_loss`` is the recipe fit on every row scored on the same rows: how much choosing on the
    scored rows would have flattered. That all-rows recipe is applied to each fold's test predictions, which are
    then combined across folds (a geometric mean); held-out images find neighbours within their own fold (drivers
    unseen by its models), test images within the test set. Steps are chosen by ``metric`` (the competition's;
    keys ``cv_<metric.key>``) and reported by ``score``. ``steps`` holds the nested out-of-fold probabilities after
    each step (``blend``, ``calibrated``, ..., ``final``, and an ordinal metric's ``decided`` classes; in-sample
    with one fold), for error analysis.
    """
    p = predictions
    near = {name: nearest(train, p.fold_of, max(settings.neighbours)) for name, (train, _) in p.spaces.items()
            } if settings.neighbours else {}
    nested: dict[str, np.ndarray] = {}
    folds = np.unique(p.fold_of)
    for fold in folds if len(folds) > 1 else ():  # one fold has no other folds to fit on: no nested score
        inside = p.fold_of == fold
        steps = apply_steps(fit_recipe(p.oofs, p.labels, p.fold_of, ~inside, near, settings, metric), p.oofs, near)
        for name, proba in steps.items():
            nested.setdefault(name, np.zeros_like(proba))[inside] = proba[inside]
    recipe = fit_recipe(p.oofs, p.labels, p.fold_of, np.ones(len(p.labels), bool), near, settings, metric)
    in_sample = apply_steps(recipe, p.oofs, near)
    cv, last = f"cv_{metric.key}", "decided" if metric.ordinal else "final"
    report = {f"{name}/{cv}": score(p.labels, proba) for name, proba in nested.items() if name not in ("final", last)}
    report[f"in_sample/{cv}"] = score(p.labels, in_sample[last])
    # What chose the calibration of the test predictions: each candidate's loss, cross-validated over every row.
    report.update({f"calibration/{name}/{cv}": -loss if metric.higher_is_better else loss
                   for name, loss in recipe.calibration_losses.items()})
    oof = nested.get("final", in_sample["final"])
    report[cv] = score(p.labels, nested.get(last, in_sample[last]))
    test_space = p.spaces[recipe.neighbour_space][1] if recipe.neighbour_space is not None else None
    return oof, test_prediction(recipe, p.tests, test_space), recipe, report, nested or in_sample


def test_prediction(recipe: BlendRecipe, tests: list[list[np.ndarray]], space: np.ndarray | None) -> np.ndarray:
    """The test probabilities ``recipe`` makes of every model's per-fold test predictions (``tests[model][fold]``),
    with neighbours found among the test rows in ``space`` (the recipe's neighbour space; None without one)."""
    # The recipe was fit on out-of-fold predictions, each made by one fold's models: apply it to each fold's test
    # predictions the same way, then combine the folds (a geometric mean, as for a blend).
    per_fold = [recipe.calibration(blend([fold_tests[k] for fold_tests in tests], recipe.weights, recipe.space))
                for k in range(len(tests[0]))]
    test = blend(per_fold, np.full(len(per_fold), 1 / len(per_fold)), "log")
    if recipe.neighbour_space is not None and recipe.neighbour_weight > 0:  # a weight of 0 needs no search
        test_near = nearest(space, np.zeros(len(test)), recipe.neighbours)
        test = smooth(test, neighbour_mean(test, test_near, recipe.neighbours), recipe.neighbour_weight)
    return clipped(test, recipe.clip)
