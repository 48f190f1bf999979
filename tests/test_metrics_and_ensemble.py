"""Kaggle's log loss by hand, and the ensemble's fitted pieces on cases whose answer is known."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipeline.config import EnsembleParams
from pipeline.data.metrics import multiclass_log_loss
from pipeline.data.predictions import load_model, write_fold
from pipeline.ensemble import blending
from pipeline.ensemble.blending import (Predictions, blend, blend_weights, choose_calibration, ensemble, fit_recipe,
                               fit_temperature, nearest, neighbour_mean, rescaled, with_temperature)
from pipeline.ensemble.error_analysis import captions, gallery, loss_by, reliability, worst_rows
from pipeline.errors import PipelineError

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
    neighbours = nearest(features, np.array([0, 0, 1, 1]), k=1)
    np.testing.assert_array_equal(neighbours[:, 0], [1, 0, 3, 2])
    np.testing.assert_allclose(neighbour_mean(proba, neighbours, 1), proba[[1, 0, 3, 2]])


def test_the_neighbour_search_finds_what_scikit_learns_cosine_search_finds_across_chunks_and_small_groups():
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(1)
    features = rng.standard_normal((2600, 32)).astype(np.float32)  # more rows a group than a chunk of 1,024
    groups = rng.integers(0, 2, len(features))
    groups[:3] = 7  # a group of three: fewer rows than k + 1, its nearest repeated
    found = nearest(features, groups, 10)
    for group in np.unique(groups):
        rows = np.nonzero(groups == group)[0]
        search = NearestNeighbors(n_neighbors=min(11, len(rows)), metric="cosine").fit(features[rows])
        expected = rows[search.kneighbors(features[rows])[1][:, 1:]]
        expected = np.pad(expected, ((0, 0), (0, 10 - expected.shape[1])), mode="edge")
        np.testing.assert_array_equal(found[rows], expected)


def test_a_log_space_blend_is_a_renormalised_weighted_geometric_mean_and_is_chosen_when_it_fits_better():
    a, b = np.array([[0.9, 0.1], [0.5, 0.5]]), np.array([[0.6, 0.4], [0.01, 0.99]])
    geometric = blend([a, b], np.array([0.5, 0.5]), "log")
    expected = np.sqrt(a * b) / np.sqrt(a * b).sum(1, keepdims=True)
    np.testing.assert_allclose(geometric, expected)
    # Two models sure of the right class, each unsure between it and a different wrong class: the geometric mean
    # keeps what both rule out, the arithmetic mean averages their doubts.
    labels = np.random.default_rng(0).integers(0, 3, 400)
    models = []
    for shift in (1, 2):
        proba = np.full((400, 3), 0.02)
        proba[np.arange(400), labels] = 0.6
        proba[np.arange(400), (labels + shift) % 3] = 0.38
        models.append(proba)
    settings = EnsembleParams(models=["a", "b"], calibration=["none"], clip_grid=[1e-15], neighbours=[],
                              neighbour_features=["x"])
    oof, _, recipe, report, _ = ensemble(Predictions(models, [[m] for m in models], labels, np.zeros(400, int), {}),
                                      settings, multiclass_log_loss)  # one fold: the in-sample fit only
    assert recipe.space == "log" and report["in_sample/cv_log_loss"] < 0.9 * math.log(3)


def test_smoothing_picks_the_k_and_weight_that_score_best_out_of_fold():
    rng = np.random.default_rng(3)
    takes = np.repeat(np.arange(60), 10)  # 60 "takes" of 10 near-identical frames, labelled per take
    labels = takes % 3
    features = rng.normal(size=(60, 16))[takes] + rng.normal(scale=0.01, size=(600, 16))
    proba = np.full((600, 3), 0.1)
    proba[np.arange(600), labels] = 0.8
    noisy = rng.random(600) < 0.3  # a third of frames confidently wrong, each on its own
    proba[noisy] = np.roll(proba[noisy], 1, axis=1)
    settings = EnsembleParams(models=["a"], calibration=["none"], clip_grid=[1e-15], neighbours=[1, 9],
                              neighbour_features=["pose"])
    recipe = fit_recipe([proba], labels, np.zeros(600, int), np.ones(600, bool),
                        {"pose": nearest(features, np.zeros(600), 9)}, settings)
    assert (recipe.neighbours, recipe.neighbour_weight) == (9, pytest.approx(0.9, abs=0.25))


def test_the_ensemble_finds_neighbours_in_the_space_that_scores_best_out_of_fold():
    rng = np.random.default_rng(4)
    takes = np.repeat(np.arange(60), 10)
    labels = takes % 3
    proba = np.full((600, 3), 0.1)
    proba[np.arange(600), labels] = 0.8
    noisy = rng.random(600) < 0.3
    proba[noisy] = np.roll(proba[noisy], 1, axis=1)
    pose = rng.normal(size=(60, 16))[takes] + rng.normal(scale=0.01, size=(600, 16))  # frames of a take together
    noise = rng.normal(size=(600, 16))  # neighbours that share nothing
    spaces = {"noise": (noise, noise[:60]), "pose": (pose, pose[:60])}
    settings = EnsembleParams(models=["a"], calibration=["none"], clip_grid=[1e-15], neighbours=[9],
                              neighbour_features=["noise", "pose"])
    _, _, recipe, report, _ = ensemble(Predictions([proba], [[proba[:60]]], labels, np.zeros(600, int), spaces),
                                    settings, multiclass_log_loss)
    assert recipe.neighbour_space == "pose" and recipe.neighbour_weight > 0.5
    assert report["in_sample/cv_log_loss"] < 0.7 * multiclass_log_loss(labels, proba)


def _calibrated_model(seed: int, n: int = 800) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, probabilities right as often as they claim, fold of each row: 4 folds)."""
    rng = np.random.default_rng(seed)
    proba = _softmax(rng.normal(0, 1.5, (n, 3)))
    labels = np.array([rng.choice(3, p=row) for row in proba])
    return labels, proba, np.arange(n) % 4


def test_a_temperature_is_chosen_when_every_fold_is_over_confident_alike():
    labels, proba, fold_of = _calibrated_model(8)
    sharp = rescaled(proba, 3.0)
    calibration, losses = choose_calibration(sharp, labels, fold_of, ["none", "temperature", "vector"])
    assert calibration.name in ("temperature", "vector") and calibration.temperature == pytest.approx(3, rel=0.2)
    assert losses["temperature"] < 0.9 * losses["none"]


def test_no_calibration_is_chosen_when_the_folds_disagree_though_a_temperature_fits_every_row_better():
    """Held-out drivers differ: two folds over-confident, two under-confident. A temperature fit on all rows still
    lowers their loss (it always can), but fit on three folds it pushes the fourth the wrong way."""
    labels, proba, fold_of = _calibrated_model(9)
    mixed = np.where((fold_of < 2)[:, None], rescaled(proba, 2.5), rescaled(proba, 0.4))
    calibration, losses = choose_calibration(mixed, labels, fold_of, ["none", "temperature", "vector"])
    assert calibration.name == "none" and losses["none"] < min(losses["temperature"], losses["vector"])
    in_sample = multiclass_log_loss(labels, with_temperature(mixed, fit_temperature(mixed, labels)))
    assert in_sample < multiclass_log_loss(labels, mixed)


def test_vector_scaling_is_chosen_for_a_model_that_under_rates_one_class():
    labels, proba, fold_of = _calibrated_model(10)
    biased = rescaled(proba, 1.0, np.array([-1.5, 0.0, 0.0]))  # class 0's odds cut by e^1.5 everywhere
    calibration, losses = choose_calibration(biased, labels, fold_of, ["none", "temperature", "vector"])
    assert calibration.name == "vector" and losses["vector"] < losses["temperature"] - 0.02
    assert calibration.bias[0] - calibration.bias[1:].mean() == pytest.approx(1.5, abs=0.4)


def test_the_ensemble_reports_each_calibrations_cross_validated_loss_and_calibrates_test_alike():
    labels, proba, fold_of = _calibrated_model(11)
    sharp = rescaled(proba, 3.0)
    _, test, recipe, report, _ = ensemble(Predictions([sharp], [[sharp[:8]] * 4], labels, fold_of, {}), NESTED_ONE,
                                          multiclass_log_loss)
    assert {"calibration/none/cv_log_loss", "calibration/temperature/cv_log_loss",
            "calibration/vector/cv_log_loss"} <= set(report)
    assert report["calibrated/cv_log_loss"] < 0.9 * report["blend/cv_log_loss"]
    np.testing.assert_allclose(test, recipe.calibration(sharp[:8]), atol=1e-9)  # one fold model's test rows


def _noise_models(seed: int, n: int = 40, models: int = 4):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 3, n), [rng.dirichlet(np.ones(3) * 0.7, n) for _ in range(models)], np.arange(n) % 4


NESTED = EnsembleParams(models=["a", "b", "c", "d"], calibration=["none", "temperature", "vector"],
                        clip_grid=[1e-15, 0.01, 0.1], neighbours=[], neighbour_features=["x"])
NESTED_ONE = NESTED.model_copy(update={"models": ["a"], "clip_grid": [1e-15]})


def test_nested_cv_does_not_credit_choices_fit_on_the_scored_rows():
    # Four models of pure noise: blend weights, temperature and clip fit on the scored rows find "signal" there;
    # fit on the other folds they cannot, and the score stays at chance (log 3) or above.
    labels, models, fold_of = _noise_models(5)
    _, _, _, report, _ = ensemble(Predictions(models, [[m[:8]] * 4 for m in models], labels, fold_of, {}), NESTED,
                               multiclass_log_loss)
    assert report["cv_log_loss"] > math.log(3) - 0.01
    assert report["in_sample/cv_log_loss"] < report["cv_log_loss"] - 0.01


@pytest.mark.parametrize("smoothing", [False, True])
def test_a_folds_nested_predictions_never_depend_on_its_own_labels(smoothing):
    """Every choice (blend, temperature, clip and, the most leak-prone, test-neighbour smoothing) is fit without the
    fold's labels: relabelling fold 0 leaves fold 0's nested predictions as they were."""
    rng = np.random.default_rng(6)
    labels, fold_of = rng.integers(0, 3, 80), np.arange(80) % 4
    # Weak models, and a space where an image's neighbours share its class: smoothing there pays, so it is chosen.
    models = [_softmax(np.eye(3)[labels] * 0.8 + rng.normal(0, 1.0, (80, 3))) for _ in range(2)]
    space = np.eye(3)[labels] * 3 + rng.normal(0, 0.3, (80, 3))
    settings = EnsembleParams(models=["a", "b"], calibration=["none", "temperature", "vector"], clip_grid=[1e-15, 0.01],
                              neighbours=[3, 5] if smoothing else [], neighbour_features=["pose"])
    relabelled = labels.copy()
    relabelled[fold_of == 0] = (labels[fold_of == 0] + 1) % 3
    runs = [ensemble(Predictions(models, [[m[:8]] * 4 for m in models], y, fold_of, {"pose": (space, space[:8])}),
                     settings, multiclass_log_loss) for y in (labels, relabelled)]
    assert (runs[0][2].neighbour_weight > 0) == smoothing  # the all-rows recipe smooths: the step is exercised
    np.testing.assert_allclose(runs[0][0][fold_of == 0], runs[1][0][fold_of == 0])
    assert not np.allclose(runs[0][0][fold_of == 1], runs[1][0][fold_of == 1])  # fold 0's labels do reach the others


def _softmax(logits: np.ndarray) -> np.ndarray:
    return np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


def _write_model(folder, folds, test_ids, drop=None):
    for fold in sorted(folds.fold.unique()):
        ids = [i for i in folds.img[folds.fold == fold] if i != drop]
        write_fold(folder / f"fold{fold}", CLASSES, ids, np.full((len(ids), 3), 1 / 3), test_ids, np.full((len(test_ids), 3),
                                                                                                 1 / 3))


def test_out_of_fold_predictions_must_cover_each_image_exactly_once(tmp_path):
    folds = pd.DataFrame({"img": [f"img_{i}.jpg" for i in range(6)], "fold": [0, 0, 1, 1, 2, 2]})
    _write_model(tmp_path / "complete", folds, ["t1.jpg", "t2.jpg"])
    oof, tests = load_model(tmp_path / "complete", folds, CLASSES, ["t1.jpg", "t2.jpg"])
    assert list(oof.index) == list(folds.img) and [test.shape for test in tests] == [(2, 3)] * 3
    _write_model(tmp_path / "gap", folds, ["t1.jpg", "t2.jpg"], drop="img_3.jpg")
    with pytest.raises(PipelineError, match="fold1/oof.csv: does not hold exactly fold 1's held-out images"):
        load_model(tmp_path / "gap", folds, CLASSES, ["t1.jpg", "t2.jpg"])


def test_error_analysis_finds_the_worst_group_class_and_images_and_reads_calibration():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 3000)
    confidence = rng.uniform(0.34, 1.0, 3000)
    top = np.where(rng.uniform(size=3000) < confidence, labels, (labels + 1) % 3)  # right as often as it claims
    proba = np.full((3000, 3), 0.0)
    proba[np.arange(3000), top] = confidence
    proba[np.arange(3000), (top + 2) % 3] = 1 - confidence
    groups = np.where(np.arange(3000) < 100, "p002", "p001")
    proba[:100] = np.roll(np.eye(3)[labels[:100]] * 0.9 + 0.05, 1, axis=1)  # driver p002: confidently wrong
    by_group = loss_by(groups, labels, proba, "group")
    assert [row["group"] for row in by_group] == ["p002", "p001"] and by_group[0]["accuracy"] == 0
    assert sum(row["images"] for row in by_group) == 3000
    calibrated = reliability(labels[100:], proba[100:])
    assert all(abs(b["accuracy"] - b["confidence"]) < 0.06 for b in calibrated if b["images"] > 100)
    sharpened = reliability(labels[100:], proba[100:] ** 4 / (proba[100:] ** 4).sum(1, keepdims=True))
    assert np.mean([b["confidence"] - b["accuracy"] for b in sharpened if b["images"] > 100]) > 0.05  # over-confident
    worst = worst_rows(labels, proba, per_class=5)
    losses = -np.log(np.clip(proba[np.arange(3000), labels], 1e-15, 1))
    for label, rows in worst.items():
        others = np.setdiff1d(np.nonzero(labels == label)[0], rows)
        assert (labels[rows] == label).all() and losses[rows].min() >= losses[others].max()
    frames = rng.integers(0, 255, (5, 240, 320, 3), dtype=np.uint8)
    picture = gallery(frames, captions([f"img_{i}.jpg" for i in range(5)], ["p002"] * 5, labels[:5], proba[:5],
                                       ["c0", "c1", "c2"]))
    assert picture.dtype == np.uint8 and picture.shape[2] == 3 and picture.shape[1] >= 5 * 192


def test_a_neighbour_weight_of_zero_skips_the_search_among_test_images(monkeypatch):
    """At full count the test set is 79,726 images: a search whose result is weighted 0 is not run."""
    rng = np.random.default_rng(7)
    labels, fold_of = rng.integers(0, 3, 80), np.arange(80) % 4
    sure = np.full((80, 3), 0.05)
    sure[np.arange(80), labels] = 0.9  # right and sure: averaging in unrelated neighbours only hurts
    searched, real = [], blending.nearest
    monkeypatch.setattr(blending, "nearest", lambda features, groups, k: searched.append(len(features)) or
                        real(features, groups, k))
    settings = EnsembleParams(models=["a"], calibration=["none"], clip_grid=[1e-15], neighbours=[3],
                              neighbour_features=["random"])
    spaces = {"random": (rng.normal(size=(80, 4)), rng.normal(size=(8, 4)))}
    _, test, recipe, _, _ = ensemble(Predictions([sure], [[sure[:8]] * 4], labels, fold_of, spaces), settings,
                                     multiclass_log_loss)
    assert recipe.neighbour_weight == 0 and searched == [80]  # among the held-out images only
    np.testing.assert_allclose(test, sure[:8], atol=1e-6)
