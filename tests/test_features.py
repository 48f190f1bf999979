"""The features stage: memory-mapped float16 features in a fixed row order, and one clear line for a bad image."""
from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.config import load_params
from pipeline.data.competitions import STATE_FARM
from pipeline.data.competitions import competition_of
from pipeline.data.frames import load_frames
from pipeline.data.raw_data import every_image
from pipeline.errors import PipelineError
from pipeline.stages.features import cache_features
from pipeline.training.feature_cache import load_feature_set
from tests.conftest import write_frames, REPO, TINY_FEATURES, run, set_params

BACKBONE = "tf_efficientnet_lite0"


def _params(tmp_path, **features):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    set_params(tmp_path, features={**TINY_FEATURES, **features})
    return load_params(tmp_path / "params.yaml")


@pytest.fixture(scope="module")
def tiny_frames(tmp_path_factory, tiny_competition):
    return load_frames(write_frames(every_image(tiny_competition, STATE_FARM), STATE_FARM.slug,
                                    tmp_path_factory.mktemp("frames") / "frames"))


def _cache(tmp_path, tiny_competition, tiny_frames, name, **features):
    out = tmp_path / name
    out.mkdir()
    returned = cache_features(BACKBONE, _params(tmp_path, **features), STATE_FARM,
                              every_image(tiny_competition, STATE_FARM), tiny_frames, out, torch.device("cpu"))
    features = load_feature_set(out)
    assert features.meta == returned  # features.json on disk is what the stage says it made
    return features


def test_features_are_float16_memmaps_in_label_and_sample_submission_order(tmp_path, tiny_competition, tiny_frames):
    features = _cache(tmp_path, tiny_competition, tiny_frames, "out", test_views=["full", "zoom"], train_passes=1)
    labels = pd.read_csv(tiny_competition / "driver_imgs_list.csv", dtype=str)
    sample = pd.read_csv(tiny_competition / "sample_submission.csv")
    assert features.train_ids == sorted(labels.img) and features.test_ids == list(sample.img)
    assert features.train_views.shape == (2, len(labels), 1280) and features.train_views.dtype == np.float16
    assert features.test_views.shape == (2, len(sample), 1280) and features.train_aug.shape == (1, len(labels), 1280)
    assert isinstance(features.train_views, np.memmap)
    for array in (features.train_views, features.test_views, features.train_aug):
        assert np.isfinite(array).all() and np.abs(array).sum(-1).min() > 0  # every row was written
    # A crop and an augmented pass are different images, so different features.
    assert not np.allclose(features.train_views[0], features.train_views[1])
    assert not np.allclose(features.train_views[0], features.train_aug[0])
    assert features.meta["test_views"] == ["full", "zoom"] and features.meta["mean"] == [0.5, 0.5, 0.5]


def test_worker_count_changes_nothing_even_for_augmented_passes(tmp_path, tiny_competition, tiny_frames):
    # Two workers forked from a process that already opened the zip: each must read with its own handle.
    one = _cache(tmp_path, tiny_competition, tiny_frames, "one", workers=0, train_passes=1, batch_size=16)
    two = _cache(tmp_path, tiny_competition, tiny_frames, "two", workers=2, train_passes=1, batch_size=16)
    np.testing.assert_array_equal(one.train_aug, two.train_aug)
    np.testing.assert_allclose(one.test_views.astype(np.float32), two.test_views.astype(np.float32), atol=1e-3)


def test_a_flip_view_is_refused_for_state_farm(tmp_path):
    params = _params(tmp_path, test_views=["full", "hflip"])
    with pytest.raises(PipelineError, match="features.test_views: .* change under a horizontal flip"):
        competition_of(params)  # as every stage gets its competition


def test_an_unlisted_backbone_argument_is_refused(repo_copy):
    result = run([sys.executable, "-m", "pipeline.stages.features", "resnet18"], repo_copy, check=False)
    assert result.returncode == 2
    assert "features.backbones: 'resnet18' is not listed" in result.stderr


def test_features_json_records_how_they_were_made(tmp_path, tiny_competition, tiny_frames):
    meta = _cache(tmp_path, tiny_competition, tiny_frames, "out", test_views=["full", "left"], train_passes=0).meta
    labels = pd.read_csv(tiny_competition / "driver_imgs_list.csv")
    assert meta == {"backbone": BACKBONE, "image_size": 64, "dim": 1280, "test_views": ["full", "left"],
                    "train_passes": 0, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic",
                    "n_train": len(labels), "n_test": len(pd.read_csv(tiny_competition / "sample_submission.csv"))}


def test_views_made_on_the_device_give_the_features_of_the_cpu_path(tmp_path, tiny_competition, tiny_frames):
    # features.views_on: device on a CPU runs the same torch code a GPU would.
    cpu = _cache(tmp_path, tiny_competition, tiny_frames, "cpu", views_on="cpu", test_views=["left"])
    device = _cache(tmp_path, tiny_competition, tiny_frames, "device", views_on="device", test_views=["left"],
                    workers=1)
    for a, b in ((cpu.train_views, device.train_views), (cpu.test_views, device.test_views)):
        a, b = a.astype(np.float32), b.astype(np.float32)
        cosine = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
        assert cosine.min() > 0.9  # the same image and view, through another decoder and resampler
        for view in range(len(a)):  # and nearer its own CPU features than any other image's
            nearest = np.argmin(((b[view][:, None] - a[view][None]) ** 2).sum(-1), axis=1)
            assert (nearest == np.arange(len(a[view]))).all()
