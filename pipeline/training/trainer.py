"""Training and prediction of a whole network on archive images: what the finetune stage runs, and the benches.

- ``Trainer``: a timm model with AdamW over two named parameter groups (the
  pretrained body at ``lr * body_lr_factor``, the new head at ``lr``), warm-up +
  cosine per batch, optional progressive unfreezing and resizing, gradient clipping,
  AMP, optional EMA of the weights and Mixup / CutMix; ``train_epoch`` and ``predict``
  (probabilities and pooled pre-logit embeddings, averaged over test-time views). A
  fixed schedule: every epoch of the recipe runs and the final (EMA) weights predict,
  so nothing is chosen on the held-out fold that the out-of-fold predictions are
  scored on.
- The GPU is never made to wait for the host: a fold's loader is built once (each
  epoch's shuffle, augmentation seeds and size reach its workers through the sampler),
  every training batch is full and every prediction batch padded to one shape (cuDNN
  plans each convolution once), targets live on the device, and the loss is summed
  there and read once an epoch; predictions stay on the device until a view is done.
- ``Checkpoint``: ``last.pt`` after every epoch, resumed only under the same
  config (process count and batch size included), loaded as plain weights
  (``weights_only``: a checkpoint is data, never code).
- ``Distributed``: one process per GPU under ``torchrun``; each rank trains on
  its share (DDP) and predicts every world-th image, rank 0 gathers and writes.
"""
from __future__ import annotations

import contextlib
import logging
import os
import pickle
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from timm.data import Mixup
from timm.utils import ModelEmaV3
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

from pipeline.atomic import atomic_file
from pipeline.compute.cores import give_back
from pipeline.compute.devices import pick_device
from pipeline.compute.machine import (ddp_device_ids, devices_refusal, fold_processes, needs_loss_scaling,
                                      process_group_backend, training_steps)
from pipeline.config import Recipe
from pipeline.errors import PipelineError
from pipeline.progress import progress
from pipeline.training.backbones import data_config
from pipeline.training.schedule import ema_settings, epoch_sizes, warmup_cosine_factor
from pipeline.views.device_views import ViewRecipe, view_images
from pipeline.views.image_data import EpochDraws, Feed, ResidentFrames, padded

log = logging.getLogger(__name__)


def spread_over_devices(setting: int | str, module: str, args: list[str]) -> bool:
    """Run this command as one process per device, under ``torchrun``, and wait for them: True. False when the fold
    trains in one process (``auto``: one GPU or none), or when this process already is one of torchrun's."""
    visible_gpus = torch.cuda.device_count()
    if refusal := devices_refusal(setting, visible_gpus):
        raise PipelineError(refusal)
    world = fold_processes(setting, visible_gpus, "WORLD_SIZE" in os.environ)
    if world <= 1:
        return False
    log.info("%s %s: %d processes, one per device (DistributedDataParallel)", module, " ".join(args), world)
    give_back()  # this process only waits: the ranks share the cores, each registered as a stage of its own
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
               "-m", module, *args]
    finished = subprocess.run(command, check=False)
    if finished.returncode != 0:
        raise PipelineError(f"{module} {' '.join(args)}: its {world} processes under torchrun failed (exit status "
                            f"{finished.returncode}); their own messages are above")
    return True


@dataclass(frozen=True)
class Distributed:
    """This process's place among ``torchrun``'s processes; rank 0 of 1 without it."""

    rank: int = 0
    world: int = 1

    @classmethod
    @contextlib.contextmanager
    def from_environment(cls) -> Iterator["Distributed"]:
        world = int(os.environ.get("WORLD_SIZE", 1))
        if world == 1:
            yield cls()
            return
        gpus = torch.cuda.is_available()
        dist.init_process_group(process_group_backend(gpus))
        if gpus:
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        try:
            yield cls(dist.get_rank(), world)
        finally:
            dist.destroy_process_group()

    @property
    def device(self) -> torch.device:
        return pick_device(int(os.environ.get("LOCAL_RANK", 0)))

    def order(self, n: int, seed: int) -> Callable[[int], list[int]]:
        """Each epoch's order of ``n`` training items on this rank: a per-epoch shuffle that a resumed run repeats
        exactly; each rank gets its share under DDP."""
        def of_epoch(epoch: int) -> list[int]:
            if self.world == 1:
                generator = torch.Generator().manual_seed(seed + epoch)
                return list(torch.utils.data.RandomSampler(range(n), generator=generator))
            sampler = DistributedSampler(range(n), self.world, self.rank, shuffle=True, seed=seed)
            sampler.set_epoch(epoch)
            return list(sampler)
        return of_epoch

    def all_agree(self, flag: torch.Tensor) -> bool:
        """Whether ``flag`` (a boolean on this rank's device) holds on every rank: each rank learns the same
        answer, so all raise together instead of leaving the others waiting in an all-reduce."""
        if self.world > 1:
            flag = flag.to(torch.int32)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag)

    def gather_rows(self, rows: np.ndarray, values: np.ndarray, n: int) -> np.ndarray | None:
        """Every rank's ``values`` for its ``rows``, merged into one [n, ...] array on rank 0 (None elsewhere).
        Sent to rank 0 only: a fold's test embeddings are ~400 MB at full count, and every rank holding every
        other rank's share (all_gather) multiplied that by the process count."""
        if self.world == 1:
            return values
        parts = [None] * self.world if self.rank == 0 else None
        dist.gather_object((rows, values), parts, dst=0)
        if self.rank != 0:
            return None
        merged = np.zeros((n, *values.shape[1:]), values.dtype)
        for part_rows, part_values in parts:
            merged[part_rows] = part_values
        return merged

    def broadcast(self, value):
        """Rank 0's ``value`` on every rank."""
        if self.world == 1:
            return value
        holder = [value]
        dist.broadcast_object_list(holder, 0)
        return holder[0]


@dataclass(frozen=True)
class FoldImages:
    """One fold's images: the training set (augmented, reseeded per epoch) with its targets, and the held-out
    images, predicted and scored (``score``: probabilities -> loss) once training has ended."""

    fold: int
    train_set: Dataset  # FrameImages or DeviceAugmentedImages: items drawn with their seeds (image_data.Draw)
    targets: torch.Tensor  # a class index per training image, or class probabilities (soft targets)
    frames: list[np.ndarray] | ResidentFrames  # the frame arrays (train, test) that rows index, or them on the device
    held_out: np.ndarray  # rows of the held-out images
    score: Callable[[np.ndarray], float]
    weights: torch.Tensor | None = None  # each training image's weight in the loss (pseudo-labels weigh less)


def _loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None,
          label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy against class indices or class probabilities (each smoothed toward uniform by
    ``label_smoothing``), as a weighted mean when weights are given."""
    if weights is None:
        return torch.nn.functional.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    per_image = torch.nn.functional.cross_entropy(logits, targets, reduction="none", label_smoothing=label_smoothing)
    return (per_image * weights).sum() / weights.sum()


class Trainer:
    """One model being fine-tuned; ``model`` must be a timm classifier already on ``feed.device``."""

    def __init__(self, model: torch.nn.Module, recipe: Recipe, feed: Feed, steps_per_epoch: int,
                 distributed: Distributed = Distributed()):
        self.model, self.recipe, self.feed, self.distributed = model, recipe, feed, distributed
        head = list(model.get_classifier().parameters())
        body = [p for p in model.parameters() if all(p is not h for h in head)]
        groups = [{"name": "body", "params": body, "lr": recipe.lr * recipe.body_lr_factor},
                  {"name": "head", "params": head, "lr": recipe.lr}]
        self.optimizer = torch.optim.AdamW(groups, weight_decay=recipe.weight_decay)
        curve = warmup_cosine_factor(int(recipe.warmup_epochs * steps_per_epoch), recipe.epochs * steps_per_epoch)
        frozen_steps = recipe.freeze_epochs * steps_per_epoch

        def body_factor(step: int) -> float:  # progressive unfreezing: the head learns first, the body waits
            return 0.0 if step < frozen_steps else curve(step)

        # One factor per group, chosen by the group's name: freezing never depends on the groups' order.
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, [body_factor if group["name"] == "body" else curve for group in groups])
        ema = ema_settings(recipe.ema_decay, recipe.ema_half_life, steps_per_epoch, recipe.ema_warmup)
        self.ema = ModelEmaV3(model, **ema) if ema else None
        mixing = recipe.mixup_alpha or recipe.cutmix_alpha
        self.mixup = Mixup(mixup_alpha=recipe.mixup_alpha, cutmix_alpha=recipe.cutmix_alpha, mode="batch",
                           label_smoothing=0.0, num_classes=model.num_classes) if mixing else None
        self.ema_counts_steps = bool(ema and ema.get("use_warmup"))  # timm's warm-up reads the step
        self.scaler = torch.amp.GradScaler(feed.device.type) if needs_loss_scaling(feed.precision) else None
        self.trained = model
        if distributed.world > 1:
            self.trained = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=ddp_device_ids(feed.device.type, feed.device.index))

    @property
    def scored(self) -> torch.nn.Module:
        """The weights that predict: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def fit(self, images: FoldImages, checkpoint: "Checkpoint", start: int,
            report: Callable[[int, dict[str, float]], None]) -> None:
        """Train from epoch ``start`` to the recipe's last, saving ``last.pt`` after each; ``report`` gets each
        epoch's figures on rank 0. The held-out images are not looked at: no epoch is chosen by them."""
        if start >= self.recipe.epochs:
            return
        train_set, recipe, device = images.train_set, self.recipe, self.feed.device
        # One loader for the fold: each epoch's shuffle, per-(epoch, image) augmentation seeds and size reach its
        # workers through the sampler, so a resumed run sees the same data and persistent workers stay up.
        _, drop_last = training_steps(len(train_set), recipe.batch_size, self.distributed.world)
        draws = EpochDraws(self.distributed.order(len(train_set), recipe.seed), len(train_set), recipe.seed,
                           images.fold, epoch_sizes(recipe.image_size, recipe.progressive_from, recipe.epochs))
        data = self.feed.loader(train_set, draws, drop_last=drop_last)
        targets = images.targets.to(device)
        weights = None if images.weights is None else images.weights.to(device)
        for epoch in range(start, recipe.epochs):
            draws.set_epoch(epoch)
            if self.mixup is not None:  # timm draws each batch's share from NumPy's generator: seeded per epoch, so
                # a resumed run mixes its later epochs as an uninterrupted one does
                np.random.seed(np.random.SeedSequence([recipe.seed, images.fold, epoch, 1]).generate_state(1)[0])
            train_loss, speed = self.train_epoch(data, targets, f"fold {images.fold} epoch {epoch + 1}", weights)
            if self.distributed.rank == 0:
                report(epoch, {"train_loss": train_loss, "train_images_per_s": speed})
                checkpoint.save_last(self, epoch)

    def train_epoch(self, data, targets: torch.Tensor, label: str,
                    weights: torch.Tensor | None = None) -> tuple[float, float]:
        """One pass of ``data`` (a loader over a ``FoldImages.train_set``); ``targets[i]`` is item i's class index,
        or its class probabilities (soft targets), ``weights[i]`` its weight in the loss (default: all equal).
        Returns (mean loss, images per second). Nothing in a step waits for the device: the loss is summed there
        and read, and checked, once the epoch is done."""
        device = self.feed.device
        targets = targets.to(device)  # a no-op when fit has put them there once
        weights = None if weights is None else weights.to(device)
        self.trained.train()
        loss_sum, steps, seen, start = torch.zeros((), device=device), 0, 0, time.perf_counter()
        total = len(data) * data.batch_size if data.drop_last else len(data.sampler)  # the images it will see
        with progress(total=total, desc=label) as bar:
            for indices, inputs in self.feed.inputs(data):
                rows = indices.to(device, non_blocking=True)
                batch_targets, batch_weights = targets[rows], None if weights is None else weights[rows]
                if self.mixup is not None:
                    inputs, batch_targets, batch_weights = self.mixed(inputs, batch_targets, batch_weights)
                with self.feed.autocast():
                    logits = self.trained(inputs).float()
                loss = _loss(logits, batch_targets, batch_weights, self.recipe.label_smoothing)
                self.backward_step(loss)
                loss_sum += loss.detach()
                steps += 1
                seen += len(indices)
                bar.update(len(indices))
            mean = loss_sum / max(steps, 1)
            finite = self.distributed.all_agree(torch.isfinite(mean))
            mean_loss = float(mean)  # the epoch's one read of the device
            bar.set_postfix(loss=f"{mean_loss:.3f}")
        if not finite:  # stop here: a NaN net would only write NaN predictions later
            raise PipelineError(f"{label}: the training loss became non-finite ({mean_loss} on average over the "
                                f"epoch's {seen} images); lower the learning rate (lr) or set grad_clip")
        return mean_loss, seen / (time.perf_counter() - start)

    def mixed(self, inputs: torch.Tensor, targets: torch.Tensor,
              weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Mixup or CutMix of the batch with itself reversed (timm's ``mode="batch"``): the images mixed in place by
        timm, the targets (made class probabilities) and weights at the same share. timm mixes only class indices
        itself; pseudo-labels are probabilities, and a pseudo-labelled image's weight must follow its share."""
        share = self.mixup._mix_batch(inputs)
        if not targets.is_floating_point():
            targets = torch.nn.functional.one_hot(targets, self.model.num_classes).float()
        targets = targets * share + targets.flip(0) * (1 - share)
        if weights is not None:
            weights = weights * share + weights.flip(0) * (1 - share)
        return inputs, targets, weights

    def backward_step(self, loss: torch.Tensor) -> None:
        """Backward, clip, optimizer and schedule step, EMA update."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.recipe.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.schedule.step()
        if self.ema is not None:  # the scheduler's count of steps, which a resumed run restores with it
            self.ema.update(self.model, step=self.schedule.last_epoch if self.ema_counts_steps else None)

    def predict(self, frames: Sequence[np.ndarray] | ResidentFrames, rows: Sequence[int], views: Sequence[str],
                label: str = "predict", on: str = "cpu") -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
        """(softmax probabilities, pooled pre-logit embeddings), each averaged over ``views``, made where ``on``
        says (``cpu`` or ``device``: where the training batches were augmented); the whole arrays on rank 0,
        (None, None) on the other ranks, which each predict every world-th image."""
        model, size, device = self.scored.eval(), self.recipe.predict_size, self.feed.device
        rank, world = self.distributed.rank, self.distributed.world
        rows = np.asarray(rows)
        mine = np.arange(rank, len(rows), world)
        # Summed on the device over the views, copied once: a copy a batch would make the host wait for each one.
        proba = torch.zeros((len(mine), model.num_classes), device=device)
        embeddings = torch.zeros((len(mine), model.num_features), device=device)
        made = ViewRecipe(on, size, data_config(model)["interpolation"], tuple(self.recipe.regions))
        batch_size = 2 * self.feed.batch_size
        per_frame = len(self.recipe.regions)  # a multi-region net's batch holds each frame's regions side by side
        with torch.inference_mode(), progress(total=len(mine) * len(views), desc=label) as bar:
            for view in views:
                dataset = view_images(made, view, frames, rows[mine], device)
                for indices, inputs in self.feed.inputs(self.feed.loader(dataset, batch_size=batch_size)):
                    count = len(indices)
                    if self.feed.pad_predictions:  # one shape for every batch; the padding is cut off below
                        inputs = padded(inputs, batch_size * per_frame)
                    with self.feed.autocast():
                        pooled = model.forward_head(model.forward_features(inputs), pre_logits=True)
                        logits = model.get_classifier()(pooled)
                    at = indices.to(device, non_blocking=True)
                    proba.index_add_(0, at, logits[:count].float().softmax(-1))
                    embeddings.index_add_(0, at, pooled[:count].float())
                    bar.update(count)
        proba, embeddings = (proba / len(views)).cpu().numpy(), (embeddings / len(views)).cpu().numpy()
        merged = (self.distributed.gather_rows(mine, proba, len(rows)),
                  self.distributed.gather_rows(mine, embeddings, len(rows)))
        return merged

    def state_dict(self) -> dict:
        """Everything to resume from, on the CPU: a checkpoint names no device, so one written on ``cuda:0``
        resumes on ``cuda:1``, on another machine's GPU or on a CPU alike."""
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "schedule": self.schedule.state_dict(), "ema": self.ema.state_dict() if self.ema is not None else {},
                 "rng": torch.get_rng_state()}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return _on_cpu(state)

    def load_state_dict(self, state: dict) -> None:
        """``state_dict``'s output, its tensors wherever they were loaded: each goes where its owner lives (the
        model's and optimizer's to their device; the CPU generator's state must be a CPU tensor)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"].cpu())


def _on_cpu(value):
    """``value`` (nested dicts, lists and tensors) with every tensor copied to the CPU."""
    if torch.is_tensor(value):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: _on_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_on_cpu(item) for item in value)
    return value


def _differences(before: dict, now: dict, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every setting that differs, nested dicts (the recipe) key by key."""
    found = []
    for key in sorted({*before, *now}):
        old, new = before.get(key), now.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            found += _differences(old, new, f"{prefix}{key}.")
        elif old != new:
            found.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return found


class Checkpoint:
    """``last.pt`` (everything needed to resume) and ``final.pt`` (the weights that predict, and the config) of one
    run."""

    def __init__(self, folder: Path, config: dict):
        self.folder, self.config = folder, config
        self.last = folder / "last.pt"

    def resume(self, trainer: Trainer) -> int:
        """Load ``last.pt`` into ``trainer`` when it was made under the same config; the epoch to start from."""
        if not self.last.is_file():
            return 0
        try:
            # Onto the CPU whatever device wrote it: load_state_dict moves each part to where it belongs.
            saved = torch.load(self.last, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
            raise PipelineError(f"{self.last}: not a checkpoint that loads as plain weights "
                                f"({type(error).__name__}); delete it to start over") from None
        if saved.get("config") != self.config:
            log.warning("not resuming from %s: it was written under other settings (%s); starting over", self.last,
                        "; ".join(_differences(saved.get("config") or {}, self.config)))
            return 0
        trainer.load_state_dict(saved["state"])
        log.info("resuming from %s after epoch %d", self.last, saved["epoch"] + 1)
        return saved["epoch"] + 1

    def save_last(self, trainer: Trainer, epoch: int) -> None:
        with atomic_file(self.last) as tmp:
            torch.save({"config": self.config, "epoch": epoch, "state": trainer.state_dict()}, tmp)

    def save_final(self, trainer: Trainer, classes: Sequence[str], machine: dict) -> None:
        """The weights that predict, the config, and ``machine``: what the run trained under that the config does
        not decide (threads, workers, precision, device), so a rerun can be made under the same."""
        with atomic_file(self.folder / "final.pt") as tmp:
            torch.save({"config": self.config, "model": _on_cpu(trainer.scored.state_dict()), "classes": list(classes),
                        "machine": machine}, tmp)
