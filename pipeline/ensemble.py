"""ensemble stage: one calibrated prediction from every model's out-of-fold and test probabilities.

Steps, each fit on out-of-fold predictions only (never on the leaderboard):
1. blend: non-negative weights summing to one, for a mean of probabilities and
   for a mean of log-probabilities (a weighted geometric mean); the better one;
2. temperature: one scalar on the blend's log-probabilities (calibration);
3. neighbour smoothing: average each prediction with its k nearest neighbours
   among images of unseen drivers (held-out fold / test set), found in a
   backbone's cached features or in a fine-tuned model's embeddings
   (``ensemble.neighbour_features``), the trick top State Farm solutions used;
   the space, k (from ``ensemble.neighbours``) and the weight are fit out of fold;
4. clipping to [eps, 1 - eps], eps chosen from ``ensemble.clip_grid``.

Reads params ``ensemble``, ``competition``, every model in ``ensemble.models``
under ``data/predictions/<competition>/``, the neighbour space and the folds CSV. Writes
``data/ensemble/<competition>/`` (``oof.csv``, ``test.csv``, ``blend.json``)
and ``metrics/ensemble/`` (metrics.json, out-of-fold confusion matrix).

    python -m pipeline.ensemble
"""
from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
from dvclive import Live
from scipy.optimize import minimize, minimize_scalar
from sklearn.neighbors import NearestNeighbors

from pipeline.atomic import atomic_dir
from pipeline.competitions import CompetitionSpec
from pipeline.config import EnsembleParams, Params, load_params
from pipeline.errors import cli
from pipeline.feature_cache import load_feature_set
from pipeline.folds import load_folds
from pipeline.metrics import KAGGLE_EPS, accuracy, competition_metric, kaggle_proba, multiclass_log_loss
from pipeline.paths import ensemble_dir, features_dir, metrics_dir, predictions_dir
from pipeline.predictions import load_embeddings, load_model, write_table
from pipeline.competitions import load_spec
from pipeline.progress import progress
from pipeline.sample import RunImages

log = logging.getLogger(__name__)
NEIGHBOUR_WEIGHTS = np.linspace(0.0, 0.9, 10)
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


def smoothing_losses(oof: np.ndarray, labels: np.ndarray, neighbours: np.ndarray, ks: list[int]) -> dict:
    """Out-of-fold log loss of neighbour smoothing for each (k, weight); weight 0 is no smoothing."""
    return {(k, float(w)): multiclass_log_loss(labels, smooth(oof, neighbour_mean(oof, neighbours, k), w))
            for k in ks for w in NEIGHBOUR_WEIGHTS}


def fit_smoothing(oof: np.ndarray, labels: np.ndarray, neighbours: np.ndarray, ks: list[int]) -> tuple[int, float]:
    """The (k, weight) of neighbour smoothing with the lowest out-of-fold log loss; weight 0 turns it off."""
    losses = smoothing_losses(oof, labels, neighbours, ks)
    return min(losses, key=losses.get)


@dataclass(frozen=True)
class Predictions:
    """Every model's out-of-fold and test probabilities, the labels, and where neighbours are found."""

    oofs: list[np.ndarray]  # per model
    tests: list[list[np.ndarray]]  # per model, per fold: each fold model's own test probabilities
    labels: np.ndarray
    fold_of: np.ndarray
    spaces: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (train rows, test rows) to find neighbours in


def ensemble(predictions: Predictions, settings: EnsembleParams, metric: Metric) -> tuple:
    """The pure core: (out-of-fold, test probabilities, recipe, report), every step fit on out-of-fold only.

    1. blend: simplex weights for a mean of probabilities and for a mean of log-probabilities; the better one;
    2. temperature; 3. neighbour smoothing, (space, k, weight) from ``settings.neighbour_features`` x
    ``settings.neighbours`` x a weight grid, held-out
    images looking for neighbours within their own fold (drivers unseen by its models), test images within
    the test set; 4. clipping. Steps are fit on multi-class log loss and reported in the competition's metric.
    """
    p, report, blends = predictions, {}, {}
    for space in ("probability", "log"):
        weights = blend_weights(p.oofs, p.labels, space)
        blends[space] = (weights, blend(p.oofs, weights, space))
        report[f"blend_{space}/cv_log_loss"] = metric(p.labels, blends[space][1])
    space = min(blends, key=lambda name: multiclass_log_loss(p.labels, blends[name][1]))
    weights, oof = blends[space]
    report["blend/cv_log_loss"] = metric(p.labels, oof)
    temperature = fit_temperature(oof, p.labels) if settings.calibrate else 1.0
    oof = with_temperature(oof, temperature)
    report["calibrated/cv_log_loss"] = metric(p.labels, oof)
    # Blend and temperature were fit on out-of-fold predictions, each made by one fold's models: apply them to
    # each fold's test predictions the same way, then combine the folds (a geometric mean, as for a blend).
    per_fold = [with_temperature(blend([tests[k] for tests in p.tests], weights, space), temperature)
                for k in range(len(p.tests[0]))]
    test = blend(per_fold, np.full(len(per_fold), 1 / len(per_fold)), "log")
    k, neighbour_weight, chosen = 0, 0.0, None
    if settings.neighbours:
        near = {name: nearest(train, p.fold_of, max(settings.neighbours)) for name, (train, _) in p.spaces.items()}
        losses = {(name, *kw): loss for name in near
                  for kw, loss in smoothing_losses(oof, p.labels, near[name], settings.neighbours).items()}
        chosen, k, neighbour_weight = min(losses, key=losses.get)
        test_near = nearest(p.spaces[chosen][1], np.zeros(len(test)), k)
        oof = smooth(oof, neighbour_mean(oof, near[chosen], k), neighbour_weight)
        test = smooth(test, neighbour_mean(test, test_near, k), neighbour_weight)
        report["neighbours/cv_log_loss"] = metric(p.labels, oof)
    clip = min(settings.clip_grid, key=lambda eps: multiclass_log_loss(p.labels, kaggle_proba(oof, eps)))
    oof, test = kaggle_proba(oof, clip), kaggle_proba(test, clip)
    oof, test = oof / oof.sum(1, keepdims=True), test / test.sum(1, keepdims=True)
    recipe = {"models": list(settings.models), "blend": space, "weights": weights.round(6).tolist(),
              "temperature": temperature, "neighbour_features": chosen, "neighbours": k,
              "neighbour_weight": neighbour_weight, "clip": clip}
    return oof, test, recipe, report


def neighbour_candidates(params: Params) -> list[str]:
    """The spaces of ``ensemble.neighbour_features`` to choose from: backbones, and fine-tuned models that this
    ensemble blends (a model left out of ``ensemble.models`` may not have run)."""
    settings = params.ensemble
    return [name for name in settings.neighbour_features if settings.neighbours
            and (name in params.features.backbones or name in settings.models)]


def neighbour_space(params: Params, spec: CompetitionSpec, folds: pd.DataFrame, source: str
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(train rows in ``folds`` order, test rows) of a space where neighbours may be found: a backbone's cached
    features averaged over views, or a fine-tuned model's pooled embeddings (what it learned: pose)."""
    if source in params.features.backbones:
        cached = load_feature_set(features_dir(spec.slug, source))
        order = pd.Series(range(len(cached.train_ids)), index=cached.train_ids).loc[folds.img].to_numpy()
        return (np.asarray(cached.train_views, np.float32).mean(0)[order],
                np.asarray(cached.test_views, np.float32).mean(0))
    return load_embeddings(predictions_dir(spec.slug, source), folds)


def main_for() -> None:
    params = load_params()
    spec = load_spec(params.competition)
    settings = params.ensemble
    folds = load_folds(spec.slug)
    labels = spec.class_indices(folds.label)
    test_ids = list(RunImages.load(spec.slug).test.img)
    oofs, tests, report = [], [], {}
    for model in settings.models:
        oof, fold_tests = load_model(predictions_dir(spec.slug, model), folds, spec.classes, test_ids)
        oofs.append(oof.to_numpy())
        tests.append([test.to_numpy() for test in fold_tests])
        report[f"{model}/cv_log_loss"] = competition_metric(spec, labels, oofs[-1])
    spaces = {name: neighbour_space(params, spec, folds, name) for name in neighbour_candidates(params)}
    oof, test, recipe, steps = ensemble(Predictions(oofs, tests, labels, folds.fold.to_numpy(), spaces), settings,
                                        functools.partial(competition_metric, spec))
    report.update(steps)
    report.update(cv_log_loss=competition_metric(spec, labels, oof), cv_accuracy=accuracy(labels, oof))

    with atomic_dir(ensemble_dir(spec.slug)) as out, \
            Live(str(metrics_dir("ensemble")), dvcyaml=False, save_dvc_exp=False, report=None) as live:
        write_table(out / "oof.csv", spec.classes, folds.img, oof)
        write_table(out / "test.csv", spec.classes, test_ids, test)
        (out / "blend.json").write_text(json.dumps(recipe, indent=2) + "\n")
        live.summary.update(report)
        names = np.array(spec.classes)
        live.log_sklearn_plot("confusion_matrix", names[labels].tolist(), names[oof.argmax(1)].tolist(),
                              name="oof_confusion.json")
    for key, value in report.items():
        log.info("%-45s %.4f", key, value)
    log.info("%s blend, weights %s, temperature %.3f, %d neighbours in %s at weight %.2f, clip %g",
             recipe["blend"], recipe["weights"], recipe["temperature"], recipe["neighbours"],
             recipe["neighbour_features"], recipe["neighbour_weight"], recipe["clip"])


main = cli(main_for)


if __name__ == "__main__":
    main()
