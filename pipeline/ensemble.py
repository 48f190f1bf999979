"""ensemble stage: one calibrated prediction from every model's out-of-fold and test probabilities.

Steps, each fit on out-of-fold predictions only (never on the leaderboard):
1. blend: non-negative weights summing to one that minimise out-of-fold log loss;
2. temperature: one scalar on the blend's log-probabilities (calibration);
3. neighbour smoothing: average each prediction with its k nearest neighbours
   in feature space among images of unseen drivers (held-out fold / test set),
   the trick top State Farm solutions used; its weight is fit out of fold;
4. clipping to [eps, 1 - eps], eps chosen from ``ensemble.clip_grid``.

Reads params ``ensemble``, ``competition``, every model in ``ensemble.models``
under ``data/predictions/<competition>/`` and the folds CSV. Writes
``data/ensemble/<competition>/`` (``oof.csv``, ``test.csv``, ``blend.json``)
and ``metrics/ensemble/`` (metrics.json, out-of-fold confusion matrix).

    python -m pipeline.ensemble
"""
from __future__ import annotations

import functools
import json
import logging
from typing import Callable

import numpy as np
import pandas as pd
from dvclive import Live
from scipy.optimize import minimize, minimize_scalar
from sklearn.neighbors import NearestNeighbors

from pipeline.atomic import atomic_dir
from pipeline.competitions import CompetitionSpec
from pipeline.config import EnsembleParams, Params, load_params
from pipeline.errors import PipelineError, cli
from pipeline.feature_cache import load_feature_set
from pipeline.folds import load_folds
from pipeline.metrics import accuracy, competition_metric, kaggle_proba, multiclass_log_loss
from pipeline.paths import ensemble_dir, features_dir, metrics_dir, predictions_dir
from pipeline.predictions import load_model, write_table
from pipeline.competitions import load_spec
from pipeline.progress import progress
from pipeline.sample import RunImages

log = logging.getLogger(__name__)
NEIGHBOUR_WEIGHTS = np.linspace(0.0, 0.9, 10)
Metric = Callable[[np.ndarray, np.ndarray], float]  # (labels, probabilities) -> loss


def blend_weights(oofs: list[np.ndarray], labels: np.ndarray) -> np.ndarray:
    """Weights on the simplex minimising the log loss of the weighted mean of probabilities."""
    if len(oofs) == 1:
        return np.ones(1)
    stacked = np.stack(oofs)
    result = minimize(lambda w: multiclass_log_loss(labels, np.tensordot(w, stacked, 1)),
                      np.full(len(oofs), 1 / len(oofs)), method="SLSQP", bounds=[(0.0, 1.0)] * len(oofs),
                      constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}])
    weights = np.clip(result.x, 0, None)
    return weights / weights.sum()


def blend(probas: list[np.ndarray], weights: np.ndarray) -> np.ndarray:
    return np.tensordot(weights, np.stack(probas), 1)


def with_temperature(proba: np.ndarray, temperature: float) -> np.ndarray:
    logits = np.log(kaggle_proba(proba)) / temperature
    logits -= logits.max(1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(1, keepdims=True)


def fit_temperature(proba: np.ndarray, labels: np.ndarray) -> float:
    return float(minimize_scalar(lambda t: multiclass_log_loss(labels, with_temperature(proba, t)),
                                 bounds=(0.05, 20.0), method="bounded").x)


def neighbour_mean(proba: np.ndarray, features: np.ndarray, groups: np.ndarray, k: int) -> np.ndarray:
    """Mean prediction of each image's k nearest (cosine) other images within its group."""
    result = np.empty_like(proba)
    with progress(total=len(proba), desc=f"{k} nearest neighbours") as bar:
        for group in np.unique(groups):
            rows = np.nonzero(groups == group)[0]
            n = min(k + 1, len(rows))
            index = NearestNeighbors(n_neighbors=n, metric="cosine").fit(features[rows])
            for start in range(0, len(rows), 4096):  # in chunks: a bar that moves, memory that stays flat
                chunk = rows[start:start + 4096]
                _, nearest = index.kneighbors(features[chunk])
                result[chunk] = proba[rows][nearest[:, 1:]].mean(1) if n > 1 else proba[chunk]
                bar.update(len(chunk))
    return result


def smooth(proba: np.ndarray, neighbours: np.ndarray, weight: float) -> np.ndarray:
    return (1 - weight) * proba + weight * neighbours


def neighbour_space(params: Params, spec: CompetitionSpec, folds: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(train rows in ``folds`` order, test rows) of the space where neighbours are found: a backbone's cached
    features, averaged over views."""
    backbone = params.ensemble.neighbour_backbone
    if backbone not in params.features.backbones:
        raise PipelineError(f"params.yaml: ensemble.neighbour_backbone: {backbone!r} is not under features.backbones")
    cached = load_feature_set(features_dir(spec.slug, backbone))
    order = pd.Series(range(len(cached.train_ids)), index=cached.train_ids).loc[folds.img].to_numpy()
    return np.asarray(cached.train_views, np.float32).mean(0)[order], np.asarray(cached.test_views, np.float32).mean(0)


def ensemble(oofs: list[np.ndarray], tests: list[np.ndarray], labels: np.ndarray, fold_of: np.ndarray,
             settings: EnsembleParams, space: tuple[np.ndarray, np.ndarray] | None, metric: Metric) -> tuple:
    """The pure core: (out-of-fold, test probabilities, recipe, report), every step fit on out-of-fold only.

    ``space`` holds the (train, test) rows neighbours are found among; held-out images look for neighbours
    within their own fold (drivers unseen by its models), as test images do within the test set. Steps are
    fit on multi-class log loss and reported in the competition's ``metric``.
    """
    report = {}
    weights = blend_weights(oofs, labels)
    oof, test = blend(oofs, weights), blend(tests, weights)
    report["blend/cv_log_loss"] = metric(labels, oof)
    temperature = fit_temperature(oof, labels) if settings.calibrate else 1.0
    oof, test = with_temperature(oof, temperature), with_temperature(test, temperature)
    report["calibrated/cv_log_loss"] = metric(labels, oof)

    neighbour_weight = 0.0
    if settings.neighbours:
        oof_near = neighbour_mean(oof, space[0], fold_of, settings.neighbours)
        losses = [multiclass_log_loss(labels, smooth(oof, oof_near, w)) for w in NEIGHBOUR_WEIGHTS]
        neighbour_weight = float(NEIGHBOUR_WEIGHTS[int(np.argmin(losses))])
        test_near = neighbour_mean(test, space[1], np.zeros(len(test)), settings.neighbours)
        oof, test = smooth(oof, oof_near, neighbour_weight), smooth(test, test_near, neighbour_weight)
        report["neighbours/cv_log_loss"] = metric(labels, oof)

    clip = min(settings.clip_grid, key=lambda eps: multiclass_log_loss(labels, kaggle_proba(oof, eps)))
    oof, test = kaggle_proba(oof, clip), kaggle_proba(test, clip)
    oof, test = oof / oof.sum(1, keepdims=True), test / test.sum(1, keepdims=True)
    recipe = {"models": list(settings.models), "weights": weights.round(6).tolist(), "temperature": temperature,
              "neighbours": settings.neighbours, "neighbour_weight": neighbour_weight, "clip": clip}
    return oof, test, recipe, report


def main_for() -> None:
    params = load_params()
    spec = load_spec(params.competition)
    settings = params.ensemble
    folds = load_folds(spec.slug)
    labels = spec.class_indices(folds.label)
    test_ids = list(RunImages.load(spec.slug).test.img)
    oofs, tests, report = [], [], {}
    for model in settings.models:
        oof, test = load_model(predictions_dir(spec.slug, model), folds, spec.classes, test_ids)
        oofs.append(oof.to_numpy())
        tests.append(test.to_numpy())
        report[f"{model}/cv_log_loss"] = competition_metric(spec, labels, oofs[-1])
    space = neighbour_space(params, spec, folds) if settings.neighbours else None
    oof, test, recipe, steps = ensemble(oofs, tests, labels, folds.fold.to_numpy(), settings, space,
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
    log.info("blend weights %s, temperature %.3f, neighbour weight %.2f, clip %g", recipe["weights"],
             recipe["temperature"], recipe["neighbour_weight"], recipe["clip"])


main = cli(main_for)


if __name__ == "__main__":
    main()
