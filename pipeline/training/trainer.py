"""Training and prediction of a whole network on archive images: what the finetune stage runs, and the benches.

- ``Trainer``: a timm model with AdamW over two named parameter groups (the
  pretrained body at ``lr * body_lr_factor``, the new head at ``lr``), warm-up +
  cosine per batch, optional progressive unfreezing, gradient clipping, AMP,
  optional EMA of the weights; ``train_epoch`` and ``predict`` (probabilities and
  pooled pre-logit embeddings, averaged over test-time views). A fixed schedule:
  every epoch of the recipe runs and the final (EMA) weights predict, so nothing is
  chosen on the held-out fold that the out-of-fold predictions are scored on.
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
from timm.utils import ModelEmaV3
from torch.utils.data import Dataset
from torch.utils.data.distributed import DistributedSampler

from pipeline.atomic import atomic_file
from pipeline.compute.cores import give_back
from pipeline.compute.devices import pick_device
from pipeline.compute.machine import (ddp_device_ids, devices_refusal, fold_processes, needs_loss_scaling,
                                      process_group_backend)
from pipeline.config import Recipe
from pipeline.errors import PipelineError
from pipeline.progress import progress
from pipeline.training.backbones import data_config
from pipeline.training.schedule import ema_settings, warmup_cosine_factor
from pipeline.views.device_views import ViewRecipe, view_images
from pipeline.views.image_data import Feed

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

    def sampler(self, dataset, seed: int, epoch: int):
        """A per-epoch shuffle that a resumed run repeats exactly; each rank gets its share under DDP."""
        if self.world == 1:
            return torch.utils.data.RandomSampler(dataset, generator=torch.Generator().manual_seed(seed + epoch))
        sampler = DistributedSampler(dataset, self.world, self.rank, shuffle=True, seed=seed)
        sampler.set_epoch(epoch)
        return sampler

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
    train_set: Dataset  # FrameImages or DeviceAugmentedImages: items reseeded through its ``seeds``
    targets: torch.Tensor  # a class index per training image, or class probabilities (soft targets)
    frames: list[np.ndarray]  # the frame arrays (train, test) that rows index
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
        ema = ema_settings(recipe.ema_decay, recipe.ema_half_life, steps_per_epoch)
        self.ema = ModelEmaV3(model, **ema) if ema else None
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
        for epoch in range(start, self.recipe.epochs):
            # Per-(epoch, image) augmentation seeds and a per-epoch shuffle: a resumed run sees the same data.
            train_set = images.train_set
            train_set.seeds = np.random.SeedSequence([self.recipe.seed, images.fold, epoch]).generate_state(
                len(train_set))
            data = self.feed.loader(train_set, self.distributed.sampler(train_set, self.recipe.seed, epoch))
            train_loss, speed = self.train_epoch(data, images.targets, f"fold {images.fold} epoch {epoch + 1}",
                                                 images.weights)
            if self.distributed.rank == 0:
                report(epoch, {"train_loss": train_loss, "train_images_per_s": speed})
                checkpoint.save_last(self, epoch)

    def train_epoch(self, data, targets: torch.Tensor, label: str,
                    weights: torch.Tensor | None = None) -> tuple[float, float]:
        """One pass of ``data`` (a loader over a ``FoldImages.train_set``); ``targets[i]`` is item i's class index,
        or its class probabilities (soft targets), ``weights[i]`` its weight in the loss (default: all equal).
        Returns (mean loss, images per second)."""
        self.trained.train()
        losses, seen, start = [], 0, time.perf_counter()
        with progress(total=len(data.sampler), desc=label) as bar:
            for indices, inputs in self.feed.inputs(data):
                with self.feed.autocast():
                    logits = self.trained(inputs).float()
                loss = _loss(logits, targets[indices].to(self.feed.device),
                             None if weights is None else weights[indices].to(self.feed.device),
                             self.recipe.label_smoothing)
                if not torch.isfinite(loss):  # stop here: a NaN net would only write NaN predictions later
                    raise PipelineError(f"{label}: the training loss became {loss.item()} after {seen} images; "
                                        f"lower the learning rate (lr) or set grad_clip")
                self.backward_step(loss)
                losses.append(loss.item())
                seen += len(indices)
                bar.update(len(indices))
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
        return float(np.mean(losses)), seen / (time.perf_counter() - start)

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

    def predict(self, frames: Sequence[np.ndarray], rows: Sequence[int], views: Sequence[str],
                label: str = "predict", on: str = "cpu") -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
        """(softmax probabilities, pooled pre-logit embeddings), each averaged over ``views``, made where ``on``
        says (``cpu`` or ``device``: where the training batches were augmented); the whole arrays on rank 0,
        (None, None) on the other ranks, which each predict every world-th image."""
        model, size = self.scored.eval(), self.recipe.predict_size
        rank, world = self.distributed.rank, self.distributed.world
        rows = np.asarray(rows)
        mine = np.arange(rank, len(rows), world)
        proba = np.zeros((len(mine), model.num_classes), np.float32)
        embeddings = np.zeros((len(mine), model.num_features), np.float32)
        made = ViewRecipe(on, size, data_config(model)["interpolation"], tuple(self.recipe.regions))
        with torch.inference_mode(), progress(total=len(mine) * len(views), desc=label) as bar:
            for view in views:
                dataset = view_images(made, view, frames, rows[mine], self.feed.device)
                for indices, inputs in self.feed.inputs(self.feed.loader(dataset, batch_size=2 * self.feed.batch_size)):
                    with self.feed.autocast():
                        pooled = model.forward_head(model.forward_features(inputs), pre_logits=True)
                        logits = model.get_classifier()(pooled)
                    proba[indices.numpy()] += logits.float().softmax(-1).cpu().numpy()
                    embeddings[indices.numpy()] += pooled.float().cpu().numpy()
                    bar.update(len(indices))
        proba, embeddings = proba / len(views), embeddings / len(views)
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
