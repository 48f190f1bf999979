"""Kaggle's log loss by hand, and the ensemble's fitted pieces on cases whose answer is known."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipeline.ensemble import blend_weights, fit_temperature, neighbour_mean, with_temperature
from pipeline.errors import PipelineError
from pipeline.metrics import multiclass_log_loss
from pipeline.predictions import load_model, write_fold

CLASSES = ("c0", "c1", "c2")


def test_log_loss_matches_a_hand_computation():
    proba = np.array([[0.8, 0.1, 0.1], [0.2, 0.6, 0.2], [0.25, 0.25, 0.5]])
    assert multiclass_log_loss(np.array([0, 1, 2]), proba) == pytest.approx(-(math.log(0.8) + math.log(0.6)
                                                                              + math.log(0.5)) / 3)


def test_log_loss_rescales_rows_and_clips_like_kaggle():
    # Row [2, 2, 0] is rescaled to [0.5, 0.5, 0]; a zero on the true class costs -log(1e-15), not infinity.
    proba = np.array([[2.0, 2.0, 0.0], [0.0, 1.0, 0.0]])
    assert multiclass_log_loss(np.array([0, 0]), proba) == pytest.approx((math.log(2) - math.log(1e-15)) / 2)


def _noisy_truth(n: int, noise: float, rng) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, 3, n)
    logits = np.eye(3)[labels] * 3 + rng.normal(0, noise, (n, 3))
    return labels, np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


def test_blend_puts_almost_all_weight_on_the_clearly_better_model():
    rng = np.random.default_rng(0)
    labels, good = _noisy_truth(600, 1.0, rng)
    useless = rng.dirichlet(np.ones(3), 600)
    weights = blend_weights([useless, good], labels)
    assert weights.sum() == pytest.approx(1) and (weights >= 0).all() and weights[1] > 0.9


def test_temperature_above_one_softens_an_overconfident_model():
    rng = np.random.default_rng(1)
    labels, proba = _noisy_truth(800, 2.5, rng)
    overconfident = with_temperature(proba, 0.3)
    temperature = fit_temperature(overconfident, labels)
    assert temperature > 1.5
    assert multiclass_log_loss(labels, with_temperature(overconfident, temperature)) < \
        multiclass_log_loss(labels, overconfident)


def test_neighbour_mean_stays_inside_each_group():
    features = np.array([[1.0, 0.0], [0.9, 0.1], [1.0, 0.05], [0.0, 1.0]])
    proba = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [0.5, 0.5, 0]])
    near = neighbour_mean(proba, features, np.array([0, 0, 1, 1]), k=1)
    np.testing.assert_allclose(near, proba[[1, 0, 3, 2]])


def _write_model(folder, folds, test_ids, drop=None):
    for fold in sorted(folds.fold.unique()):
        ids = [i for i in folds.img[folds.fold == fold] if i != drop]
        write_fold(folder / f"fold{fold}", CLASSES, ids, np.full((len(ids), 3), 1 / 3), test_ids, np.full((len(test_ids), 3),
                                                                                                 1 / 3))


def test_out_of_fold_predictions_must_cover_each_image_exactly_once(tmp_path):
    folds = pd.DataFrame({"img": [f"img_{i}.jpg" for i in range(6)], "fold": [0, 0, 1, 1, 2, 2]})
    _write_model(tmp_path / "complete", folds, ["t1.jpg", "t2.jpg"])
    oof, test = load_model(tmp_path / "complete", folds, CLASSES, ["t1.jpg", "t2.jpg"])
    assert list(oof.index) == list(folds.img) and test.shape == (2, 3)
    _write_model(tmp_path / "gap", folds, ["t1.jpg", "t2.jpg"], drop="img_3.jpg")
    with pytest.raises(PipelineError, match="fold1/oof.csv: does not hold exactly fold 1's held-out images"):
        load_model(tmp_path / "gap", folds, CLASSES, ["t1.jpg", "t2.jpg"])
