"""One fold of one fine-tuned model, trained and predicted: what the finetune and pseudo stages both run.

``train_fold`` builds the model and the fold's images from params, trains the recipe's fixed schedule
(resuming from ``last.pt``), predicts the held-out fold and the test images in every test-time view with the
final weights, and writes the predictions, embeddings, checkpoint and DVCLive curves under the given name
(``finetune-<model>`` or ``pseudo-<model>``).
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from pipeline.atomic import atomic_dir
from pipeline.compute.cores import share
from pipeline.compute.devices import device_name
from pipeline.compute.machine import loader_workers, training_steps
from pipeline.config import Params, load_params
from pipeline.data.competitions import CompetitionSpec, augment_of, competition_of, finetune_views
from pipeline.data.frames import Frames, load_frames
from pipeline.data.metrics import competition_metric
from pipeline.data.predictions import write_embeddings, write_fold, write_trained_on
from pipeline.data.tables import RunImages, load_folds
from pipeline.errors import PipelineError
from pipeline.paths import checkpoint_dir, fold_dir, folds_csv, frames_dir, metrics_dir
from pipeline.training.backbones import create_classifier, data_config
from pipeline.training.schedule import seed_everything
from pipeline.training.trainer import Checkpoint, Distributed, FoldImages, Trainer
from pipeline.views.device_augment import augmented_images, resolve_augment_on
from pipeline.views.image_data import Feed, ResidentFrames, frames_on

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PseudoLabels:
    """Images with a teacher's probabilities, trained on beside the labelled images: the test images and the
    student's own held-out fold, which the teacher predicted without its labels (pipeline/stages/pseudo.py)."""

    test_ids: list[str]
    held_out_ids: list[str]
    probabilities: np.ndarray  # [test images + held-out images, classes], in that order: soft targets
    weight: float  # of a pseudo-labelled image in the loss, a labelled one's being 1
    teacher: dict  # which teacher and what it was, recorded in the run's config

    @property
    def ids(self) -> list[str]:
        return [*self.test_ids, *self.held_out_ids]


def run_config(params: Params, model: str, fold: int, spec: CompetitionSpec, pseudo: PseudoLabels | None,
               augment_on: str, world: int) -> dict:
    """Everything that decides this fold's training; a checkpoint resumes only under the same config. The process
    count is in it (it changes the steps per epoch and the batch each step sees); the test-time views and size are
    not: other views, or another size, re-predict with a finished run's weights instead of training again."""
    recipe = params.finetune.recipe(model).model_dump(exclude={"test_image_size"})
    return {"model": model, "fold": fold, "recipe": recipe,
            "amp": params.finetune.amp, "augment": augment_of(params, spec).model_dump(), "dropout": params.dropout,
            "augment_on": augment_on, "world": world, "competition": spec.slug,
            "folds_csv_sha256": hashlib.sha256(folds_csv(spec.slug).read_bytes()).hexdigest(),
            "pseudo": None if pseudo is None else {"weight": pseudo.weight, **pseudo.teacher}}


def new_trainer(params: Params, model_name: str, spec: CompetitionSpec, n_train: int,
                distributed: Distributed) -> Trainer:
    """The pretrained backbone with a new head for the competition's classes, on this process's device."""
    recipe = params.finetune.recipe(model_name)
    model = create_classifier(recipe.backbone, len(recipe.regions), len(spec.classes), params.dropout,
                              param_key=f"finetune.models.{model_name}.backbone")
    model = model.to(distributed.device, memory_format=torch.channels_last)
    config = data_config(model)
    feed = Feed.on(distributed.device, recipe.batch_size, params.finetune.workers, config["mean"], config["std"],
                   params.finetune.amp)
    steps, _ = training_steps(n_train, recipe.batch_size, distributed.world)
    return Trainer(model, recipe, feed, steps, distributed)


def fold_images(params: Params, model_name: str, fold: int, spec: CompetitionSpec, frames: Frames,
                pseudo: PseudoLabels | None, device: torch.device,
                arrays: list[np.ndarray] | ResidentFrames | None = None) -> tuple[FoldImages, pd.Series, pd.Series]:
    """The fold's training images (and the pseudo-labelled test and held-out images) with targets, and the ids of its
    held-out and of its labelled training images; their pixels read from ``arrays`` (``frames_on``: on the device
    already, or the memory-mapped cache)."""
    arrays = frames.both if arrays is None else arrays
    recipe, folds = params.finetune.recipe(model_name), load_folds(spec.slug)
    train_rows, held_out = folds[folds.fold != fold], folds[folds.fold == fold]
    rows, targets, weights = frames.rows("train", train_rows.img), spec.class_indices(train_rows.label), None
    if pseudo is not None:  # soft targets for all: the labelled images' are one-hot
        rows = np.r_[rows, frames.rows("test", pseudo.test_ids), frames.rows("train", pseudo.held_out_ids)]
        targets = np.concatenate([np.eye(len(spec.classes), dtype=np.float32)[targets], pseudo.probabilities])
        weights = torch.as_tensor(np.r_[np.ones(len(train_rows)), np.full(len(pseudo.ids), pseudo.weight)],
                                  dtype=torch.float32)
    train_set = augmented_images(arrays, rows, augment_of(params, spec), recipe, params.finetune.augment_on,
                                 device)
    return FoldImages(fold, train_set, torch.as_tensor(targets), arrays, frames.rows("train", held_out.img),
                      functools.partial(competition_metric, spec, spec.class_indices(held_out.label)),
                      weights), held_out.img, train_rows.img


def train_fold(params: Params, model_name: str, fold: int, distributed: Distributed, name: str,
               pseudo: PseudoLabels | None = None) -> None:
    """Train ``model_name``'s recipe on ``fold`` (plus pseudo-labels), predict, and write it all as ``name``."""
    from dvclive import Live  # here, not at the top: importing DVC costs a second that the benches don't need

    spec = competition_of(params)
    seed_everything(params.finetune.recipe(model_name).seed + fold)
    frames = load_frames(frames_dir(spec.slug))
    augment_on = resolve_augment_on(params.finetune.augment_on, distributed.device)
    arrays = frames_on(frames, augment_on, distributed.device)  # on a GPU they fit, uploaded once
    images, held_out_ids, trained_ids = fold_images(params, model_name, fold, spec, frames, pseudo, distributed.device,
                                                    arrays)
    trainer = new_trainer(params, model_name, spec, len(images.train_set), distributed)
    checkpoint = Checkpoint(checkpoint_dir(spec.slug, name, fold),
                            run_config(params, model_name, fold, spec, pseudo, augment_on, distributed.world))
    start = checkpoint.resume(trainer)
    live = Live(str(metrics_dir(f"{name}-fold{fold}")), resume=start > 0, dvcyaml=False, save_dvc_exp=False,
                report=None) if distributed.rank == 0 else None

    def report(epoch: int, figures: dict[str, float]) -> None:
        for key, value in figures.items():
            live.log_metric(key, value)
        live.next_step()
        log.info("%s fold %d epoch %d: train loss %.4f, %.1f img/s", name, fold, epoch + 1, *figures.values())

    trainer.fit(images, checkpoint, start, report)
    machine = trained_under(trainer, augment_on)
    test, views = RunImages.load(spec.slug).test, finetune_views(params, spec)
    # Views made where the training batches were augmented: on a GPU both on the device, on a CPU both in NumPy.
    oof, oof_embeddings = trainer.predict(arrays, images.held_out, views, f"fold {fold} held-out", augment_on)
    test_proba, test_embeddings = trainer.predict(arrays, frames.rows("test", test.img), views,
                                                  f"fold {fold} test", augment_on)
    if live is None:
        return
    checkpoint.save_final(trainer, spec.classes, machine)
    with atomic_dir(fold_dir(spec.slug, name, fold)) as out:
        write_fold(out, spec.classes, held_out_ids, oof, test.img, test_proba)
        write_embeddings(out, oof_embeddings, test_embeddings)
        write_trained_on(out, list(trained_ids), pseudo.ids if pseudo is not None else [])
        if pseudo is not None:
            (out / "teacher.json").write_text(json.dumps(pseudo.teacher, indent=2) + "\n")
    live.summary[f"fold_{spec.scorer.key}"] = images.score(oof)
    live.summary["threads"] = machine["threads"]  # beside the score in `dvc exp show`: it moves the last digits
    live.summary["hflip"] = augment_of(params, spec).hflip  # what augment.hflip: auto decided
    # The machine, for `dvc exp show` (a run trained on Kaggle's GPUs beside one trained here): "Tesla T4 x 2", "cpu".
    live.summary["device"] = device_name(trainer.feed.device) + (
        f" x {trainer.distributed.world}" if trainer.distributed.world > 1 else "")
    live.end()
    log.info("%s fold %d: held-out %s %.4f with %d test view(s); wrote %s", name, fold, spec.metric,
             live.summary[f"fold_{spec.scorer.key}"], len(views), fold_dir(spec.slug, name, fold))


def trained_under(trainer: Trainer, augment_on: str) -> dict:
    """What a run trained under that its config does not fix and its numbers depend on: torch's intra-op threads
    (CPU training's last digits follow them; pipeline/compute/cores.py), the workers, the autocast dtype, the device."""
    return {"threads": torch.get_num_threads(), "cores": share(), "processes": trainer.distributed.world,
            "workers": loader_workers(trainer.feed.workers, trainer.feed.device.type, share()),
            "precision": trainer.feed.precision or "float32", "device": str(trainer.feed.device),
            "augment_on": augment_on}


def fold_command(description: str) -> tuple[Params, str, int]:
    """params and ``<model> --fold k`` from the command line (the finetune and pseudo stages): a model of
    ``finetune.models`` (a student trains its model's recipe too) and a fold of the folds table."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("model")
    parser.add_argument("--fold", type=int, required=True)
    args = parser.parse_args()
    params = load_params()
    if args.model not in params.finetune.models:
        raise PipelineError(f"params.yaml: finetune.models: {args.model!r} is not listed "
                            f"({', '.join(params.finetune.models)})")
    # Checked against tables the stage reads anyway, not against finetune.folds or pseudo.models: adding a fold
    # or a student must not make every other fold's stage out of date.
    folds = sorted(load_folds(competition_of(params).slug).fold.unique())
    if args.fold not in folds:
        raise PipelineError(f"{folds_csv(params.competition)}: has no fold {args.fold} (folds {folds})")
    return params, args.model, args.fold
