"""The fine-tuning loop as a GPU needs it, checked on the CPU: a fold's loader built once (each epoch's shuffle,
seeds and size reach persistent workers through the sampler), every training batch full and every padded prediction
batch one shape, frames uploaded once to the device where they fit, augmentation that leaves every other generator
alone; and the recipe's Mixup / CutMix and progressive resizing."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pipeline.compute.machine import frames_resident, pads_prediction, training_steps
from pipeline.config import Recipe, load_params
from pipeline.training.backbones import create_classifier
from pipeline.training.schedule import epoch_sizes
from pipeline.training.trainer import Distributed, FoldImages, Trainer
from pipeline.views.augment import AugmentRanges, view_transform
from pipeline.views.device_augment import DeviceAugmentedImages, augmented_images
from pipeline.views.device_views import DeviceViews
from pipeline.views.image_data import EpochDraws, Feed, FrameImages, ResidentFrames
from tests.conftest import REPO

FRAMES = np.random.default_rng(0).integers(0, 255, (10, 48, 64, 3), dtype=np.uint8)  # a frame cache of ten images


def _recipe(**changes) -> Recipe:
    defaults = load_params(REPO / "params.yaml").finetune.recipe("net").model_dump()
    return Recipe(**{**defaults, "backbone": "tf_efficientnet_lite0", "image_size": 32, "batch_size": 4,
                     "epochs": 2, **changes})


def _trainer(recipe: Recipe, workers: int = 0) -> Trainer:
    torch.manual_seed(0)
    model = create_classifier(recipe.backbone, 1, 3, 0.5)
    feed = Feed(torch.device("cpu"), recipe.batch_size, workers, [0.5] * 3, [0.5] * 3, None)
    steps, _ = training_steps(len(FRAMES), recipe.batch_size, 1)
    return Trainer(model, recipe, feed, steps)


def _fold(recipe: Recipe, on: str = "cpu") -> FoldImages:
    train_set = augmented_images([FRAMES], np.arange(10), load_params(REPO / "params.yaml").augment, recipe, on,
                                 torch.device("cpu"))
    return FoldImages(0, train_set, torch.arange(10) % 3, [FRAMES], np.arange(10), lambda proba: 0.0)


class _NoCheckpoint:
    def save_last(self, trainer, epoch):
        pass


def _inputs_seen(trainer: Trainer) -> list[torch.Tensor]:
    """What the net's first convolution is given, in training (the model) and in prediction (its EMA)."""
    seen = []
    for net in {id(trainer.model): trainer.model, id(trainer.scored): trainer.scored}.values():
        net.conv_stem.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    return seen


def test_every_batch_is_full_in_training_and_one_shape_in_a_padded_prediction():
    assert training_steps(1400, 32, 1) == (43, True)  # the development set's fold: 43 full batches, 24 left over
    assert training_steps(1400, 128, 2) == (5, True)  # a rank's share under DDP
    assert training_steps(10, 16, 1) == (1, False)  # fewer images than a batch: one batch of them all
    assert pads_prediction("cuda") and not pads_prediction("cpu")
    trainer = _trainer(_recipe())
    seen = _inputs_seen(trainer)
    trainer.fit(_fold(trainer.recipe), _NoCheckpoint(), 0, lambda epoch, figures: None)
    assert [len(x) for x in seen] == [4, 4, 4, 4]  # 10 images, batch 4: two full batches an epoch, two epochs
    seen.clear()
    plain, _ = trainer.predict([FRAMES], np.arange(10), ["full", "zoom"])
    assert sorted({len(x) for x in seen}) == [2, 8]  # batches of 2 x 4 and the remainder of 2, per view
    seen.clear()
    padding = dataclasses.replace(trainer.feed, pad_predictions=True)  # what Feed.on decides on a GPU
    trainer.feed = padding
    padded, _ = trainer.predict([FRAMES], np.arange(10), ["full", "zoom"])
    assert {len(x) for x in seen} == {8}
    np.testing.assert_allclose(padded, plain, atol=1e-5)  # BatchNorm in eval mode: the padding changes no row


@pytest.mark.parametrize("on", ["cpu", "device"])
def test_a_folds_loader_is_built_once_and_each_epoch_reaches_its_persistent_worker_through_the_sampler(
        on, monkeypatch):
    built = []
    original = Feed.loader
    monkeypatch.setattr(Feed, "loader", lambda self, *args, **kwargs: built.append(1) or original(self, *args,
                                                                                                  **kwargs))
    trainer = _trainer(_recipe(), workers=1)
    seen = _inputs_seen(trainer)
    images = _fold(trainer.recipe, on)
    trainer.fit(images, _NoCheckpoint(), 0, lambda epoch, figures: None)
    assert len(built) == 1  # one loader, its worker kept for both epochs
    # Each epoch's batches are what a loader made afresh for that epoch in this process gives: the worker saw the
    # epoch's shuffle and seeds, not the first epoch's again.
    for epoch in range(2):
        draws = EpochDraws(Distributed().order(10, 0), 10, 0, 0, [32, 32])
        draws.set_epoch(epoch)
        fresh = dataclasses.replace(trainer.feed, workers=0)
        expected = [x for _, x in fresh.inputs(fresh.loader(images.train_set, draws, drop_last=True))]
        assert all(torch.equal(a, b) for a, b in zip(seen[2 * epoch:2 * epoch + 2], expected))
    assert not torch.equal(seen[0], seen[2])


@pytest.mark.parametrize("on", ["cpu", "device"])
def test_progressive_resizing_trains_each_epoch_at_its_size_and_predicts_at_the_last(on):
    assert epoch_sizes(160, 96, 5) == [96, 112, 128, 144, 160]
    assert epoch_sizes(128, 0, 5) == [128] * 5
    trainer = _trainer(_recipe(image_size=48, progressive_from=32, epochs=3))
    seen = _inputs_seen(trainer)
    trainer.fit(_fold(trainer.recipe, on), _NoCheckpoint(), 0, lambda epoch, figures: None)
    assert [x.shape[-1] for x in seen] == [32, 32, 32, 32, 48, 48]  # 32, 40 rounded to 32 px steps of 16, 48
    seen.clear()
    trainer.predict([FRAMES], np.arange(10), ["full"])
    assert {x.shape[-1] for x in seen} == {48}


def test_mixup_mixes_images_targets_and_weights_at_one_share_and_cutmix_trains():
    trainer = _trainer(_recipe(mixup_alpha=0.4))
    inputs = torch.randn(4, 3, 8, 8)
    original, weights = inputs.clone(), torch.tensor([1.0, 1.0, 0.5, 0.5])
    np.random.seed(3)  # timm draws the share from NumPy's generator, seeded per fold by seed_everything
    mixed, targets, mixed_weights = trainer.mixed(inputs, torch.tensor([0, 1, 2, 0]), weights)
    share = float(targets[1, 1])  # image 1 (class 1) mixed with image 2 (class 2)
    assert 0.0 < share < 1.0
    torch.testing.assert_close(mixed, original * share + original.flip(0) * (1 - share))
    torch.testing.assert_close(targets[1], torch.tensor([0.0, share, 1 - share]))
    torch.testing.assert_close(mixed_weights, weights * share + weights.flip(0) * (1 - share))
    assert _trainer(_recipe()).mixup is None
    cutmix = _trainer(_recipe(cutmix_alpha=1.0))
    figures = []
    cutmix.fit(_fold(cutmix.recipe), _NoCheckpoint(), 0, lambda epoch, found: figures.append(found))
    assert len(figures) == 2 and all(np.isfinite(f["train_loss"]) for f in figures)


def test_augmenting_on_the_device_leaves_every_other_generator_as_it_found_it(monkeypatch):
    # torch.manual_seed would also reseed every CUDA generator (a GPU's dropout then restarts from the augmentation
    # seed at every batch); a fork of the CPU generator does not restore those. The augmentation must not touch them.
    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: reseeded.append(seed))
    ranges = AugmentRanges.of(load_params(REPO / "params.yaml").augment, 1.6)
    dataset = DeviceAugmentedImages([FRAMES], np.arange(10), ranges, 32, seeds=np.arange(10))
    cpu_before = torch.get_rng_state()
    cuda_before = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    first = dataset.to_images(dataset.__getitems__([0, 1, 2])["image"], torch.arange(3), device)
    again = dataset.to_images(dataset.__getitems__([0, 1, 2])["image"], torch.arange(3), device)
    assert reseeded == []
    assert torch.equal(torch.get_rng_state(), cpu_before)
    assert all(torch.equal(a, b) for a, b in zip(torch.cuda.get_rng_state_all() if cuda_before else [], cuda_before))
    assert torch.equal(first, again)  # the batch's own seed decides its draw


def test_a_frame_view_dataset_takes_plain_indices_as_before():
    dataset = FrameImages([FRAMES], np.arange(10), view_transform("full", 32), 32)
    batch = dataset.__getitems__([3, 4])
    assert batch["image"].shape == (2, 32, 32, 3) and batch["index"].tolist() == [3, 4]


def test_frames_stay_on_the_device_when_they_fit_beside_training_and_not_on_a_16_gb_card():
    development_set = 2511 * 240 * 320 * 3  # 0.58 GB at 320x240
    state_farm = 102150 * 240 * 320 * 3  # 23.5 GB
    assert frames_resident(development_set, (75 * 2**30, 80 * 2**30))
    assert frames_resident(state_farm, (135 * 2**30, 141 * 2**30))  # an H200
    assert not frames_resident(state_farm, (15 * 2**30, 16 * 2**30))  # a T4: the memory-mapped cache, in workers
    assert not frames_resident(development_set, None)  # a CPU keeps reading the cache


@pytest.mark.parametrize("dataset", ["augment", "views"])
def test_frames_uploaded_once_give_the_batches_the_memory_mapped_cache_gives(dataset, tmp_path):
    np.save(tmp_path / "train.npy", FRAMES)
    arrays = [np.load(tmp_path / "train.npy", mmap_mode="r")]  # as load_frames maps the cache
    resident = ResidentFrames.upload(arrays, np.arange(10), torch.device("cpu"), chunk=3)  # chunks of 3: 4 copies
    assert torch.equal(resident.frames, torch.from_numpy(FRAMES))
    ranges = AugmentRanges.of(load_params(REPO / "params.yaml").augment, 1.6)

    def made(source) -> list[torch.Tensor]:
        if dataset == "augment":
            images = DeviceAugmentedImages(source, np.array([7, 2, 5, 9, 0, 3]), ranges, 32, seeds=np.arange(6))
        else:
            images = DeviceViews(source, np.array([7, 2, 5, 9, 0, 3]), "zoom", 32)
        feed = Feed(torch.device("cpu"), 4, 1, [0.5] * 3, [0.5] * 3, None)
        data = feed.loader(images)
        assert data.num_workers == (0 if isinstance(source, ResidentFrames) else 1)  # nothing left for a worker
        return [x for _, x in feed.inputs(data)]

    assert all(torch.equal(a, b) for a, b in zip(made(resident), made(arrays), strict=True))
