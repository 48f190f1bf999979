"""Crop models and multi-region nets: each region is the part of the frame pipeline/views/augment.py's REGIONS gives (and
docs/regions.jpg draws), the stand-in puts the wheel, the radio and the head inside the regions named for them,
and a crop model trains and predicts on its crop, a multi-region net on all of its regions."""
from __future__ import annotations

import typing

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.config import AugmentParams, Recipe, Region, load_params
from pipeline.data.competitions import STATE_FARM
from pipeline.data.standin_scene import RADIO, WHEEL_CENTRE, _Canvas, random_look
from pipeline.paths import checkpoint_dir, fold_dir
from pipeline.training.backbones import create_classifier
from pipeline.training.trainer import Trainer
from pipeline.views.augment import REGIONS, view_transform
from pipeline.views.device_augment import augmented_images
from pipeline.views.image_data import Feed, FrameImages
from tests.conftest import REPO, put_competition, run, set_params

HEIGHT, WIDTH = 96, 128


def _coordinate_frames(count: int = 2) -> np.ndarray:
    """Frames whose red channel is the pixel's column and green its row: an image made from them says exactly
    which part of the frame it came from."""
    rows, columns = np.mgrid[:HEIGHT, :WIDTH]
    frame = np.stack([columns, rows, np.zeros_like(rows)], -1).astype(np.uint8)
    return np.repeat(frame[None], count, 0)


def _box(region: str) -> tuple[float, float, float, float]:
    left, top, right, bottom = REGIONS[region]
    return left * WIDTH, top * HEIGHT, right * WIDTH - 1, bottom * HEIGHT - 1


def _assert_made_from(images: np.ndarray, region: str, slack: float = 1.5) -> None:
    """Every pixel of ``images`` (NHWC) came from inside ``region``, and they span it."""
    left, top, right, bottom = _box(region)
    x, y = images[..., 0].astype(float), images[..., 1].astype(float)
    assert left - slack <= x.min() and x.max() <= right + slack, (region, x.min(), x.max())
    assert top - slack <= y.min() and y.max() <= bottom + slack, (region, y.min(), y.max())
    assert x.max() - x.min() >= 0.9 * (right - left) and y.max() - y.min() >= 0.9 * (bottom - top), region


def test_params_accept_exactly_the_regions_augment_defines():
    assert typing.get_args(Region) == tuple(REGIONS)


@pytest.mark.parametrize("region", list(REGIONS))
def test_each_region_is_the_part_of_the_frame_its_fractions_give(region):
    frames = _coordinate_frames()
    made = FrameImages([frames], [0, 1], view_transform("full", 64, "nearest"), 64, regions=[region])
    _assert_made_from(made.__getitems__([0, 1])["image"].numpy(), region)


def test_a_multi_region_batch_holds_each_frames_regions_in_order():
    frames = _coordinate_frames(3)
    regions = ["full", "head", "bottom_right"]
    images = FrameImages([frames], [0, 1, 2], view_transform("full", 48, "nearest"), 48,
                         regions=regions).__getitems__([2, 0])["image"].numpy()
    assert images.shape == (2 * len(regions), 48, 48, 3)
    for i, region in enumerate(regions * 2):
        _assert_made_from(images[i:i + 1], region)


def test_augmented_training_images_stay_inside_the_region_on_the_cpu_and_on_the_device():
    """Augmentation without magnitude (strength 0) moves nothing: what remains is the region's crop."""
    frames, augment = _coordinate_frames(4), AugmentParams(**load_params(REPO / "params.yaml").augment.model_dump())
    for on in ("cpu", "device"):
        images = augmented_images([frames], [0, 1, 2, 3], augment, _recipe(["hands"], 48).model_copy(
            update={"augment_strength": 0.0, "seed": 0}), on, torch.device("cpu"))
        images.seeds = np.arange(4)
        batch = images.__getitems__([0, 1, 2, 3])
        made = batch["image"] if on == "cpu" else images.to_images(batch["image"], torch.arange(4), torch.device("cpu"))
        # RandomResizedCrop keeps the crop ratio param's aspect: a centred part of the region, never outside it.
        left, top, right, bottom = _box("hands")
        x, y = made.numpy()[..., 0].astype(float), made.numpy()[..., 1].astype(float)
        assert left - 2 <= x.min() and x.max() <= right + 2 and top - 2 <= y.min() and y.max() <= bottom + 2, on


def test_the_standin_draws_wheel_radio_and_head_inside_the_regions_named_for_them():
    """The stand-in's design geometry, through each driver's camera and the final mirror, lands where real photos
    have it: a region chosen on real photos looks at the same thing on the stand-in."""
    def image_xy(look, design):
        x, y = _Canvas(look, 640, 480, shake=(0.0, 0.0)).xy(*design)
        return (640 - x) / 640, y / 480  # the frame is mirrored after drawing

    def inside(region, point):
        left, top, right, bottom = REGIONS[region]
        return left <= point[0] <= right and top <= point[1] <= bottom

    for seed in range(30):
        look = random_look(np.random.default_rng(seed))
        assert inside("wheel", image_xy(look, WHEEL_CENTRE)) and inside("hands", image_xy(look, WHEEL_CENTRE))
        assert inside("bottom_right", image_xy(look, RADIO))
        assert inside("head", image_xy(look, (0.42, 0.335)))  # the head's centre at rest (standin_scene.draw_frame)


def _recipe(regions: list[str], size: int) -> Recipe:
    defaults = load_params(REPO / "params.yaml").finetune.recipe("net").model_dump()
    return Recipe(**{**defaults, "backbone": "tf_efficientnet_lite0", "regions": regions, "image_size": size,
                     "batch_size": 2, "epochs": 1})


def test_a_crop_model_trains_and_predicts_on_its_crop_and_a_multi_region_net_on_all_of_them():
    frames = _coordinate_frames(4)
    for regions in (["head"], ["full", "head", "hands"]):
        recipe = _recipe(regions, 32)
        model = create_classifier(recipe.backbone, len(regions), 3, 0.0)
        trainer = Trainer(model, recipe, Feed(torch.device("cpu"), 2, 0, [0.5] * 3, [0.5] * 3, None), 2)
        seen = []

        def watch(net: torch.nn.Module) -> None:  # record what the backbone sees
            forward_features = net.forward_features

            def looking(images: torch.Tensor) -> torch.Tensor:
                seen.append(images.detach() * 0.5 + 0.5)
                return forward_features(images)

            net.forward_features = looking

        watch(model)  # trains
        watch(trainer.scored)  # predicts (the EMA of the weights)

        def made_images() -> np.ndarray:
            pixels = (torch.cat(seen).permute(0, 2, 3, 1) * 255).round().numpy()
            seen.clear()
            return pixels.reshape(-1, len(regions), *pixels.shape[1:])  # a frame's regions one after another

        train_set = augmented_images([frames], [0, 1, 2, 3], AugmentParams(
            **load_params(REPO / "params.yaml").augment.model_dump()),
            _recipe(regions, 32).model_copy(update={"augment_strength": 0.0, "seed": 0}), "cpu", torch.device("cpu"))
        train_set.seeds = np.arange(4)
        trainer.train_epoch(trainer.feed.loader(train_set), torch.tensor([0, 1, 2, 0]), "train")
        for pixels in (made_images(), None):
            if pixels is None:  # then at test time, in two views
                proba, embeddings = trainer.predict([frames], [0, 1, 2], ["full", "zoom"])
                assert proba.shape == (3, 3) and embeddings.shape == (3, len(regions) * 1280)
                pixels = made_images()
            for j, region in enumerate(regions):
                left, top, right, bottom = _box(region)
                x, y = pixels[:, j, ..., 0], pixels[:, j, ..., 1]
                assert left - 3 <= x.min() and x.max() <= right + 3, (regions, region)
                assert top - 3 <= y.min() and y.max() <= bottom + 3, (regions, region)


def test_a_multi_region_model_runs_as_a_finetune_stage_from_params_alone(repo_copy, tiny_competition, run_stage):
    put_competition(repo_copy, tiny_competition)
    set_params(repo_copy, finetune={"models": {"three": {"backbone": "tf_efficientnet_lite0", "image_size": 32,
                                                         "epochs": 1, "regions": ["full", "head", "hands"]}}})
    run([__import__("sys").executable, "-m", "pipeline.stages.folds"], repo_copy)
    status, lines = run_stage(repo_copy, "finetune", "three", "--fold", "0")
    assert status == 0, lines
    folder = repo_copy / fold_dir(STATE_FARM.slug, "finetune-three", 0)
    oof = pd.read_csv(folder / "oof.csv")
    assert len(oof) and np.allclose(oof[list(STATE_FARM.classes)].sum(axis=1), 1, atol=1e-4)
    assert np.load(folder / "oof_embeddings.npy").shape == (len(oof), 3 * 1280)
    saved = torch.load(repo_copy / checkpoint_dir(STATE_FARM.slug, "finetune-three", 0) / "final.pt",
                       weights_only=True)
    assert saved["config"]["recipe"]["regions"] == ["full", "head", "hands"]
