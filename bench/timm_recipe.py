"""Our fine-tuned net against one trained by timm's own ``train.py`` recipe, on the same fold, scored the same way.

The bar every single net of ours must clear (docs/results.md): timm's ImageNet recipe as its ``train.py`` applies
it — AdamW lr 1e-3, weight decay 0.05 (not on biases and norms), cosine per epoch after one warm-up epoch from
1e-5, RandAugment ``rand-m9-mstd0.5-inc1`` (with ``mmax9``: Pillow 13 refuses the 0 bits posterize gets at
magnitude 10), random erasing 0.25 (per-pixel noise), label smoothing 0.1, RandomResizedCrop (0.08-1, 3/4-4/3),
random interpolation; a horizontal flip only where augment.hflip allows it; no EMA — on the same pretrained
weights, image size, epochs and batch size as our model's recipe, the same training images (the other folds) and
the same test-time views (``finetune.test_views``, squashed frames); ``--set image_size=...`` (epochs,
batch_size) changes both.

Ours trains through the finetune stage's own code (pipeline/training/fold_training.py) under the name ``bench-<model>``, with
``--set key=value`` overriding the model's recipe (a lever to try); a fold already trained under the same settings
resumes and only predicts. Both print held-out log loss and, given the competition's solution file (``img`` and
``classname`` columns, as the real development set has), the unseen test images' log loss. Run it in a scratch
copy of a workspace whose ``frames`` and ``folds`` stages have run (it writes bench-* outputs there):

    python bench/timm_recipe.py --folds 0 --solution ../shared/data/statefarm-dev/solution.csv
    python bench/timm_recipe.py --folds 0 --skip-timm --set label_smoothing=0.1 --augment 'crop_scale=[0.3, 1.0]'
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch
import yaml
from PIL import Image
from timm.data import create_transform
from timm.loss import LabelSmoothingCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch.utils.data import DataLoader, Dataset

from pipeline.compute.cores import share
from pipeline.compute.devices import pick_device
from pipeline.config import Params, load_params
from pipeline.data.competitions import load_spec
from pipeline.data.frames import gather, load_frames
from pipeline.data.metrics import competition_metric
from pipeline.data.predictions import read_table
from pipeline.data.tables import RunImages, load_folds
from pipeline.paths import fold_dir, frames_dir
from pipeline.training.backbones import create_classifier, data_config
from pipeline.training.fold_training import train_fold
from pipeline.training.schedule import seed_everything
from pipeline.training.trainer import Distributed, Trainer
from pipeline.views.image_data import Feed


class TimmTrainImages(Dataset):
    """Frames as PIL images through timm's training transform (normalised float tensors, random erasing last)."""

    def __init__(self, arrays, rows, targets, transform):
        self.arrays, self.rows, self.targets, self.transform = arrays, np.asarray(rows), targets, transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        frame = gather(self.arrays, self.rows[[index]])[0]
        return self.transform(Image.fromarray(frame)), self.targets[index]


def timm_net(params: Params, model_name: str, fold: int, flip: bool) -> Trainer:
    """One fold trained by timm's recipe; returned inside a Trainer only to predict the way ours does."""
    spec, recipe = load_spec(params.competition), params.finetune.recipe(model_name)
    seed_everything(recipe.seed + fold)
    frames, folds = load_frames(frames_dir(spec.slug)), load_folds(spec.slug)
    train = folds[folds.fold != fold]
    device = pick_device()
    model = create_classifier(recipe.backbone, 1, len(spec.classes), 0.0).to(device)
    config = data_config(model)
    transform = create_transform(recipe.image_size, is_training=True, auto_augment="rand-m9-mstd0.5-inc1-mmax9",
                                 re_prob=0.25, re_mode="pixel", interpolation="random", hflip=0.5 if flip else 0.0,
                                 mean=config["mean"], std=config["std"])
    data = DataLoader(TimmTrainImages(frames.both, frames.rows("train", train.img), spec.class_indices(train.label),
                                      transform), batch_size=recipe.batch_size, shuffle=True, drop_last=True,
                      num_workers=0, generator=torch.Generator().manual_seed(recipe.seed + fold))
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05)
    schedule = CosineLRScheduler(optimizer, t_initial=recipe.epochs, warmup_t=1, warmup_lr_init=1e-5, lr_min=0.0)
    loss_of = LabelSmoothingCrossEntropy(0.1)
    for epoch in range(recipe.epochs):
        model.train()
        start, losses = time.perf_counter(), []
        for images, targets in data:
            loss = loss_of(model(images.to(device)), targets.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        schedule.step(epoch + 1)
        print(f"timm recipe fold {fold} epoch {epoch + 1}: train loss {np.mean(losses):.4f}, "
              f"{len(data.dataset) / (time.perf_counter() - start):.1f} img/s", flush=True)
    feed = Feed.on(device, recipe.batch_size, "auto", config["mean"], config["std"], amp=False)
    return Trainer(model, recipe.model_copy(update={"ema_decay": 0.0}), feed, len(data))


def scores(params: Params, fold: int, oof: np.ndarray, test: np.ndarray, solution: pd.DataFrame | None) -> dict:
    spec, folds = load_spec(params.competition), load_folds(params.competition)
    held_out = folds[folds.fold == fold]
    result = {"held_out": competition_metric(spec, spec.class_indices(held_out.label), oof)}
    if solution is not None:
        truth = solution.set_index("img").loc[RunImages.load(spec.slug).test.img, "classname"]
        result["unseen"] = competition_metric(spec, spec.class_indices(truth), test)
    return result


def with_overrides(params: Params, model_name: str, overrides: dict, augment: dict) -> Params:
    """params with ``overrides`` on the model's recipe and ``augment`` on section augment."""
    entry = params.finetune.models[model_name].model_copy(update=overrides)
    return params.model_copy(update={"augment": params.augment.model_copy(update=augment),
                                     "finetune": params.finetune.model_copy(
                                         update={"models": {**params.finetune.models, model_name: entry}})})


def ours(params: Params, model_name: str, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """Our recipe trained by the finetune stage's code; its held-out and test predictions."""
    train_fold(params, model_name, fold, Distributed(), f"bench-{model_name}")
    spec = load_spec(params.competition)
    out = fold_dir(spec.slug, f"bench-{model_name}", fold)
    return (read_table(out / "oof.csv", spec.classes).to_numpy(), read_table(out / "test.csv", spec.classes).to_numpy())


def main() -> None:
    params = load_params()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=next(iter(params.finetune.models)), help="a model of finetune.models")
    parser.add_argument("--folds", type=int, nargs="+", default=[0])
    parser.add_argument("--solution", help="the test images' labels (img, classname): scores unseen images too")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of our model's recipe (YAML value), e.g. label_smoothing=0.1")
    parser.add_argument("--augment", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of section augment for ours, e.g. 'crop_scale=[0.3, 1.0]'")
    parser.add_argument("--skip-timm", action="store_true", help="only ours (timm's figure is already known)")
    parser.add_argument("--skip-ours", action="store_true", help="only timm's (ours is already known)")
    args = parser.parse_args()
    overrides, augment = ({key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in items)}
                          for items in (args.set, args.augment))
    tried = with_overrides(params, args.model, overrides, augment)  # timm's net: its size, epochs, batch too
    spec = load_spec(params.competition)
    solution = pd.read_csv(args.solution) if args.solution else None
    share()  # register as a stage: our folds' threads are counted like the pipeline's
    frames, views = load_frames(frames_dir(spec.slug)), list(params.finetune.test_views)
    rows = []
    for fold in args.folds:
        start = time.perf_counter()
        if not args.skip_ours:
            oof, test = ours(tried, args.model, fold)
            rows.append({"recipe": f"ours {overrides or ''} {augment or ''}".strip(), "fold": fold,
                         **scores(params, fold, oof, test, solution), "seconds": round(time.perf_counter() - start)})
            print(rows[-1], flush=True)
        if args.skip_timm:
            continue
        start = time.perf_counter()
        trainer = timm_net(tried, args.model, fold, params.augment.hflip)
        folds = load_folds(spec.slug)
        oof, _ = trainer.predict(frames.both, frames.rows("train", folds.img[folds.fold == fold]), views, "held-out")
        test, _ = trainer.predict(frames.both, frames.rows("test", RunImages.load(spec.slug).test.img), views, "test")
        rows.append({"recipe": "timm train.py", "fold": fold, **scores(params, fold, oof, test, solution),
                     "seconds": round(time.perf_counter() - start)})
        print(rows[-1], flush=True)
    print(pd.DataFrame(rows).round(4).to_string(index=False))


if __name__ == "__main__":
    main()
