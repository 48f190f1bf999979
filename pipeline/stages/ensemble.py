"""ensemble stage: one calibrated prediction from every model's out-of-fold and test probabilities.

Blend, calibration (none, a temperature or vector scaling, chosen by cross-validation), test-neighbour smoothing
and clipping (pipeline/ensemble/blending.py), each fit on out-of-fold predictions only, never on the leaderboard, and
each chosen by the competition's metric (an ordinal one's thresholds fit last). The reported ``cv_log_loss``
(``cv_<key>`` of the metric: ``cv_roc_auc``, ``cv_kappa``, ...; ``metric`` names it and its direction) is nested:
each fold's rows are predicted by choices fit on the other folds, so CV does not flatter the choices made on it;
``in_sample/cv_log_loss`` shows what choosing on the scored rows would have claimed. Test predictions use the
choices fit on every row.

Reads params ``ensemble`` and ``competition``, every model in ``ensemble.models`` under
``data/predictions/<competition>/``, the neighbour spaces (a backbone's cached features, or a fine-tuned model's
embeddings), the folds CSV and the frame cache (thumbnails). Writes ``data/ensemble/<competition>/``
(``oof.csv``: the nested out-of-fold predictions, ``test.csv``, ``blend.json``) and ``metrics/ensemble/``:
metrics.json and the plots of what it gets wrong (pipeline/ensemble/error_analysis.py): the out-of-fold confusion
matrix, log loss per group and per class, reliability before and after calibration, and each class's worst images.

    python -m pipeline.stages.ensemble
"""
from __future__ import annotations

import functools
import json
import logging

import numpy as np
import pandas as pd
from dvclive import Live

from pipeline.atomic import atomic_dir
from pipeline.compute.cores import stage_command
from pipeline.config import EnsembleParams, load_params
from pipeline.data.competitions import CompetitionSpec, competition_of
from pipeline.data.frames import gather, load_frames
from pipeline.data.metrics import accuracy, competition_metric
from pipeline.data.predictions import load_embeddings, load_model, write_table
from pipeline.data.tables import RunImages, load_folds
from pipeline.ensemble.blending import Predictions, ensemble
from pipeline.ensemble.error_analysis import MAX_GROUPS, captions, gallery, loss_by, reliability, worst_rows
from pipeline.paths import ensemble_dir, features_dir, frames_dir, metrics_dir, predictions_dir
from pipeline.training.feature_cache import load_feature_set

log = logging.getLogger(__name__)
FINE_TUNED = ("finetune-", "pseudo-")  # model folders whose fold predictions carry embeddings


def neighbour_candidates(settings: EnsembleParams) -> list[str]:
    """The spaces of ``ensemble.neighbour_features`` to choose from: backbones (params.yaml's checks made every
    other name a fine-tuned model), and fine-tuned models that this ensemble blends (a model left out of
    ``ensemble.models`` may not have run)."""
    return [name for name in settings.neighbour_features if settings.neighbours
            and (not name.startswith(FINE_TUNED) or name in settings.models)]


def neighbour_space(spec: CompetitionSpec, folds: pd.DataFrame, source: str) -> tuple[np.ndarray, np.ndarray]:
    """(train rows in ``folds`` order, test rows) of a space where neighbours may be found: a backbone's cached
    features averaged over views, or a fine-tuned model's pooled embeddings (what it learned: pose)."""
    if not source.startswith(FINE_TUNED):
        cached = load_feature_set(features_dir(spec.slug, source))
        order = pd.Series(range(len(cached.train_ids)), index=cached.train_ids).loc[folds.img].to_numpy()
        return (np.asarray(cached.train_views, np.float32).mean(0)[order],
                np.asarray(cached.test_views, np.float32).mean(0))
    return load_embeddings(predictions_dir(spec.slug, source), folds)


def log_errors(live: Live, spec: CompetitionSpec, folds: pd.DataFrame, labels: np.ndarray, blended: np.ndarray,
               oof: np.ndarray) -> None:
    """The error-analysis plots (dvc.yaml's ``plots`` draws them) of the nested out-of-fold predictions ``oof``;
    ``blended`` is the same before calibration, smoothing and clipping."""
    names = np.array(spec.classes)
    # dvc.yaml's titles say "worst first": the bars keep the order written.
    live.log_plot("per_group", loss_by(folds.group, labels, oof, "group", MAX_GROUPS), x="log_loss", y="group")
    live.log_plot("per_class", loss_by(names[labels], labels, oof, "class"), x="log_loss", y="class")
    live.log_plot("reliability_before", reliability(labels, blended), x="confidence", y="accuracy")
    live.log_plot("reliability_after", reliability(labels, oof), x="confidence", y="accuracy")
    live.log_plot("reliability_diagonal", [{"confidence": 0.0, "accuracy": 0.0}, {"confidence": 1.0, "accuracy": 1.0}],
                  x="confidence", y="accuracy")
    frames = load_frames(frames_dir(spec.slug))
    for label, rows in worst_rows(labels, oof).items():
        ids, groups = folds.img.to_numpy()[rows], folds.group.astype(str).to_numpy()[rows]
        thumbnails = gather(frames.both, frames.rows("train", ids))
        live.log_image(f"worst_{names[label]}.jpg",
                       gallery(thumbnails, captions(ids, groups, labels[rows], oof[rows], spec.classes)))


def main_for() -> None:
    params = load_params()
    spec = competition_of(params)
    settings = params.ensemble
    folds = load_folds(spec.slug)
    labels = spec.class_indices(folds.label)
    test_ids = list(RunImages.load(spec.slug).test.img)
    oofs, tests, report = [], [], {}
    for model in settings.models:
        oof, fold_tests = load_model(predictions_dir(spec.slug, model), folds, spec.classes, test_ids)
        oofs.append(oof.to_numpy())
        tests.append([test.to_numpy() for test in fold_tests])
        report[f"{model}/cv_{spec.scorer.key}"] = competition_metric(spec, labels, oofs[-1])
    spaces = {name: neighbour_space(spec, folds, name) for name in neighbour_candidates(settings)}
    oof, test, fitted, steps, by_step = ensemble(Predictions(oofs, tests, labels, folds.fold.to_numpy(), spaces),
                                                 settings, functools.partial(competition_metric, spec), spec.scorer)
    report.update(steps)
    report["cv_accuracy"] = accuracy(labels, oof)
    recipe = fitted.as_dict(settings.models)

    with atomic_dir(ensemble_dir(spec.slug)) as out, \
            Live(str(metrics_dir("ensemble")), dvcyaml=False, save_dvc_exp=False, report=None) as live:
        write_table(out / "oof.csv", spec.classes, folds.img, oof)
        write_table(out / "test.csv", spec.classes, test_ids, test)
        (out / "blend.json").write_text(json.dumps(recipe, indent=2) + "\n")
        live.summary.update(report)
        # The metric's name and direction beside its figures in `dvc exp show` (higher is better for AUC, kappa)
        live.summary["metric"] = f"{spec.metric} ({spec.scorer.direction})"
        names = np.array(spec.classes)
        decided = by_step.get("decided", oof).argmax(1)  # the classes a submission would hold
        live.log_sklearn_plot("confusion_matrix", names[labels].tolist(), names[decided].tolist(),
                              name="oof_confusion.json")
        log_errors(live, spec, folds, labels, by_step["blend"], oof)
    for key, value in report.items():
        log.info("%-45s %.4f", key, value)
    log.info("metric: %s, %s", spec.metric, spec.scorer.direction)
    log.info("%s blend, weights %s, calibration %s (temperature %.3f), %d neighbours in %s at weight %.2f, clip %g",
             recipe["blend"], recipe["weights"], recipe["calibration"], recipe["temperature"], recipe["neighbours"],
             recipe["neighbour_features"], recipe["neighbour_weight"], recipe["clip"])


main = stage_command(main_for)


if __name__ == "__main__":
    main()
