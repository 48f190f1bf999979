"""finetune stage: train a whole pretrained net on one driver fold, with augmentation; resumable; CPU, GPU or DDP.

Reads params ``finetune``, ``augment``, ``dropout``, ``features.test_views``, the
folds CSV and the image zip. Writes, for fold k of backbone B:
``models/<competition>/finetune-B/fold<k>/`` (``last.pt`` every epoch, to resume
an interrupted run; ``best.pt``: best weights and the resolved config),
``data/predictions/<competition>/finetune-B/fold<k>/`` (``oof.csv``, ``test.csv``,
the same format the heads write) and DVCLive curves in ``metrics/finetune-fold<k>/``.

    python -m pipeline.finetune --fold 0
    torchrun --nproc_per_node=2 -m pipeline.finetune --fold 0     # DistributedDataParallel; rank 0 writes
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import pickle
import time

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from timm.utils import ModelEmaV3
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from pipeline.atomic import atomic_dir, atomic_file
from pipeline.augment import train_transform, view_transform
from pipeline.backbones import create_backbone, data_config
from pipeline.config import Params, load_params
from pipeline.errors import PipelineError, cli
from pipeline.image_data import ArchiveImages, autocast, batches, loader, to_model_input
from pipeline.images import ImageArchive
from pipeline.metrics import competition_metric
from pipeline.folds import load_folds
from pipeline.paths import folds_csv, metrics_dir, models_dir, predictions_dir, raw_dir
from pipeline.predictions import write_fold
from pipeline.raw_data import load_spec, load_test_ids, train_table
from pipeline.training import EarlyStopping, seed_everything, warmup_cosine

log = logging.getLogger(__name__)


def run_config(params: Params, fold: int, folds_file_hash: str) -> dict:
    """Everything that decides this fold's training; a checkpoint resumes only under the same config."""
    return {"fold": fold, "finetune": params.finetune.model_dump(exclude={"folds", "workers"}),
            "augment": params.augment.model_dump(), "dropout": params.dropout,
            "test_views": list(params.features.test_views), "competition": params.competition,
            "folds_csv_sha256": folds_file_hash}


def train_one_epoch(model, data, optimizer, schedule, device, mean, std, settings, ema=None, scaler=None,
                    label: str = "train") -> tuple[float, float]:
    """One pass of ``data``; returns (mean loss, images per second)."""
    model.train()
    losses, seen, start = [], 0, time.perf_counter()
    with tqdm(total=len(data.sampler), unit="img", desc=label, mininterval=2, disable=None) as progress:
        for (indices, images), targets in batches_with_targets(data):
            inputs = to_model_input(images, mean, std, device)
            with autocast(device, settings.amp):
                loss = torch.nn.functional.cross_entropy(model(inputs).float(), targets.to(device))
            if not torch.isfinite(loss):  # stop here: a NaN net would only write NaN predictions later
                raise PipelineError(f"{label}: the training loss became {loss.item()} after {seen} images; "
                                    f"lower finetune.lr or set finetune.grad_clip")
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:  # fp16 needs loss scaling; bf16 and float32 do not
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if settings.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            schedule.step()
            if ema is not None:
                ema.update(model)
            losses.append(loss.item())
            seen += len(indices)
            progress.update(len(indices))
            progress.set_postfix(loss=f"{losses[-1]:.3f}", img_s=f"{seen / (time.perf_counter() - start):.0f}")
    return float(np.mean(losses)), seen / (time.perf_counter() - start)


def batches_with_targets(data):
    """``batches`` plus the class targets, which the dataset carries as ``targets`` (one per member)."""
    for indices, images in batches(data):
        yield (indices, images), torch.as_tensor(data.dataset.targets[indices.numpy()])


def predict(model, archive, members, size, views, config, settings, device, rank, world) -> np.ndarray | None:
    """Softmax averaged over views; each rank takes every world-th image, rank 0 gets the whole array."""
    model.eval()
    mine = np.arange(rank, len(members), world)
    total = None
    for view in views:
        dataset = ArchiveImages(archive, [members[i] for i in mine], view_transform(view, size,
                                                                                   config["interpolation"]), size)
        out = np.zeros((len(mine), model.num_classes), np.float32)
        with torch.inference_mode():
            for indices, images in batches(loader(dataset, settings.batch_size * 2, settings.workers, device)):
                with autocast(device, settings.amp):
                    logits = model(to_model_input(images, config["mean"], config["std"], device))
                out[indices.numpy()] = logits.float().softmax(-1).cpu().numpy()
        total = out if total is None else total + out
    total /= len(views)
    if world == 1:
        return total
    parts = [None] * world
    dist.all_gather_object(parts, (mine, total))
    if rank != 0:
        return None
    merged = np.zeros((len(members), total.shape[1]), np.float32)
    for rows, values in parts:
        merged[rows] = values
    return merged


def finetune_fold(params: Params, fold: int, rank: int = 0, world: int = 1) -> None:
    from dvclive import Live  # here, not at the top: bench/finetune.py runs train_one_epoch where DVC is absent

    spec = load_spec(params.competition)
    settings = params.finetune
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}") if torch.cuda.is_available() \
        else torch.device("cpu")
    folds_path = folds_csv(spec.slug)
    folds = load_folds(spec.slug)
    config = run_config(params, fold, hashlib.sha256(folds_path.read_bytes()).hexdigest())
    model_name = f"finetune-{settings.backbone}"
    ckpt_dir = models_dir(spec.slug, model_name) / f"fold{fold}"
    last_path = ckpt_dir / "last.pt"

    seed_everything(settings.seed + fold)
    model = create_backbone(settings.backbone, num_classes=len(spec.classes), param_key="finetune.backbone",
                            drop_rate=params.dropout).to(device, memory_format=torch.channels_last)
    data_cfg = data_config(model)
    archive = ImageArchive(raw_dir(spec.slug) / spec.train_archive)
    member_of = train_table(raw_dir(spec.slug), spec).set_index("img").member
    train_rows = folds[folds.fold != fold].reset_index(drop=True)
    held_out = folds[folds.fold == fold].reset_index(drop=True)

    def members(rows: pd.DataFrame) -> list[str]:
        return list(member_of.loc[rows.img])

    train_set = ArchiveImages(archive, members(train_rows), train_transform(params.augment, settings.image_size,
                                                                            settings.seed), settings.image_size)
    train_set.targets = spec.class_indices(train_rows.label)
    held_out_labels = spec.class_indices(held_out.label)

    classifier = set(id(p) for p in model.get_classifier().parameters())
    body = [p for p in model.parameters() if id(p) not in classifier]
    optimizer = torch.optim.AdamW([{"params": body, "lr": settings.lr * settings.body_lr_factor},
                                   {"params": list(model.get_classifier().parameters()), "lr": settings.lr}],
                                  weight_decay=settings.weight_decay)
    steps_per_epoch = -(-len(train_set) // (settings.batch_size * world))
    schedule = warmup_cosine(optimizer, int(settings.warmup_epochs * steps_per_epoch), settings.epochs * steps_per_epoch)
    ema = ModelEmaV3(model, decay=settings.ema_decay) if settings.ema_decay else None
    fp16 = device.type == "cuda" and settings.amp and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda") if fp16 else None
    stopper, start_epoch, stopped_before = EarlyStopping(settings.patience), 0, False

    if last_path.is_file():
        try:  # weights_only: a checkpoint is data, never code to run
            saved = torch.load(last_path, map_location=device, weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
            raise PipelineError(f"{last_path}: not a checkpoint that loads as plain weights "
                                f"({type(error).__name__}); delete it to start fold {fold} over") from None
        if saved["config"] == config:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            schedule.load_state_dict(saved["schedule"])
            if ema is not None:
                ema.load_state_dict(saved["ema"])
            stopper.best, stopper.best_epoch, stopper.best_state = saved["best"], saved["best_epoch"], saved["best_state"]
            torch.set_rng_state(saved["rng"])
            start_epoch = saved["epoch"] + 1
            stopped_before = saved["epoch"] - stopper.best_epoch >= settings.patience
            log.info("fold %d: resuming from %s after epoch %d", fold, last_path, saved["epoch"])
        else:
            log.info("fold %d: %s was made with other params; starting over", fold, last_path)

    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.index
                                                                is not None else None)
    live = Live(str(metrics_dir(f"finetune-fold{fold}")), resume=start_epoch > 0, dvcyaml=False,
                save_dvc_exp=False, report=None) if rank == 0 else None
    stopped = stopped_before
    for epoch in range(start_epoch, settings.epochs):
        if stopped:
            break
        # Per-(epoch, image) augmentation seeds and a per-epoch shuffle: a resumed run sees the same data.
        train_set.seeds = np.random.SeedSequence([settings.seed, fold, epoch]).generate_state(len(train_set))
        sampler = DistributedSampler(train_set, world, rank, shuffle=True, seed=settings.seed) if world > 1 else \
            torch.utils.data.RandomSampler(train_set, generator=torch.Generator().manual_seed(settings.seed + epoch))
        if world > 1:
            sampler.set_epoch(epoch)
        data = loader(train_set, settings.batch_size, settings.workers, device, sampler=sampler)
        body_base_lr = schedule.base_lrs[0]
        if epoch < settings.freeze_epochs:  # progressive unfreezing: the head learns first, the body waits
            schedule.base_lrs[0] = 0.0
        train_loss, speed = train_one_epoch(train_model, data, optimizer, schedule, device, data_cfg["mean"],
                                            data_cfg["std"], settings, ema, scaler, f"fold {fold} epoch {epoch + 1}")
        schedule.base_lrs[0] = body_base_lr
        scored = ema.module if ema is not None else model
        proba = predict(scored, archive, members(held_out), settings.image_size, ["full"], data_cfg, settings,
                        device, rank, world)
        stop_flag = torch.zeros(1)
        if rank == 0:
            val_loss = competition_metric(spec, held_out_labels, proba)
            stopped = stopper.update(epoch, val_loss, scored)
            live.log_metric("train_loss", train_loss)
            live.log_metric("val_log_loss", val_loss)
            live.log_metric("train_images_per_s", speed)
            live.next_step()
            log.info("fold %d epoch %d: train loss %.4f, held-out log loss %.4f, %.1f img/s", fold, epoch + 1,
                     train_loss, val_loss, speed)
            with atomic_file(last_path) as tmp:
                torch.save({"config": config, "epoch": epoch, "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                            "ema": ema.state_dict() if ema is not None else {}, "best": stopper.best,
                            "best_epoch": stopper.best_epoch, "best_state": stopper.best_state,
                            "rng": torch.get_rng_state()}, tmp)
            stop_flag[0] = float(stopped)
        if world > 1:
            dist.broadcast(stop_flag, 0)
            stopped = bool(stop_flag[0])

    best_state = {k: v.cpu() for k, v in stopper.best_state.items()} if rank == 0 else None
    if world > 1:  # only rank 0 scored the epochs; every rank predicts with its best weights
        holder = [best_state]
        dist.broadcast_object_list(holder, 0)
        best_state = holder[0]
    scored = ema.module if ema is not None else model
    scored.load_state_dict(best_state)
    test_ids = load_test_ids(raw_dir(spec.slug), spec)
    views = list(params.features.test_views)
    oof = predict(scored, archive, members(held_out), settings.image_size, views, data_cfg, settings, device, rank,
                  world)
    test_archive = ImageArchive(raw_dir(spec.slug) / spec.test_archive)
    test = predict(scored, test_archive, [spec.test_member(i) for i in test_ids], settings.image_size, views, data_cfg,
                   settings, device, rank, world)
    if rank != 0:
        return
    with atomic_file(ckpt_dir / "best.pt") as tmp:
        torch.save({"config": config, "model": scored.state_dict(), "classes": list(spec.classes)}, tmp)
    with atomic_dir(predictions_dir(spec.slug, model_name) / f"fold{fold}") as out:
        write_fold(out, spec.classes, held_out.img, oof, test_ids, test)
    live.summary["fold_log_loss"] = competition_metric(spec, held_out_labels, oof)
    live.end()
    log.info("fold %d: held-out log loss %.4f with %d test view(s); wrote %s", fold, live.summary["fold_log_loss"],
             len(views), predictions_dir(spec.slug, model_name) / f"fold{fold}")


@cli
def main() -> None:
    parser = argparse.ArgumentParser(description="Fine-tune on one driver fold")
    parser.add_argument("--fold", type=int, required=True)
    fold = parser.parse_args().fold
    params = load_params()
    if fold not in params.finetune.folds:
        raise PipelineError(f"params.yaml: finetune.folds: fold {fold} is not listed ({params.finetune.folds})")
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1:  # started by torchrun
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    try:
        finetune_fold(params, fold, dist.get_rank() if world > 1 else 0, world)
    finally:
        if world > 1:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
