"""Does fine-tuning wait for data? Training images/s of the stage's own loop against the model alone.

Prints, at one batch size and image size on this machine: (b) the finetune stage's own fit (``Trainer.fit``: one
loader for the fold, ``--epochs`` epochs over the competition's train images: cached frames -> albumentations
augmentation, or kornia on the device with ``--augment-on device`` -> DataLoader -> device), its first epoch
against its last, steady one (target: the first <= 1.3x a steady one: a GPU plans each convolution shape once, in
the first epoch); (a) model-only training throughput (forward + backward + AdamW step on random tensors already on
the device, same AMP and channels_last; after (b), so the plans are made) and b/a (target >= 0.8 on a GPU); (c) the
same loop with timm's tiny ``test_efficientnet``, a model so small that the input path and the loop's own work
dominate: its milliseconds per step are what the loop costs beside any model, a figure a CPU can move. Needs `dvc
repro frames` first; ``--images`` cycles the train set so a GPU run lasts long enough.

    python bench/finetune.py                                          # CPU, params.yaml's finetune preset
    python bench/finetune.py --batch-size 128 --image-size 224 --images 30000 --augment-on cpu device  # a GPU
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from pipeline.compute.cores import share
from pipeline.compute.machine import loader_workers, training_steps
from pipeline.config import load_params
from pipeline.data.competitions import load_spec
from pipeline.data.frames import load_frames
from pipeline.data.tables import RunImages
from pipeline.paths import frames_dir
from pipeline.training.backbones import create_backbone, data_config
from pipeline.views.device_augment import augmented_images, resolve_augment_on
from pipeline.views.image_data import Feed
from input_path import breakdown, report  # bench/input_path.py, beside this script
from pipeline.compute.devices import pick_device
from pipeline.training.trainer import FoldImages, Trainer


def model_only(trainer: Trainer, size: int, seconds: float) -> float:
    """Train steps on random tensors already on the device: what the model alone can do."""
    feed, batch_size = trainer.feed, trainer.recipe.batch_size
    inputs = torch.randn(batch_size, 3, size, size, device=feed.device).contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, trainer.model.num_classes, (batch_size,), device=feed.device)
    done, start = 0, None
    trainer.trained.train()
    for step in range(100_000):
        if step == 3:
            if feed.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        with feed.autocast():
            loss = torch.nn.functional.cross_entropy(trainer.trained(inputs).float(), targets)
        trainer.backward_step(loss)
        loss.item()  # the loop reads the loss each step too
        if start is not None:
            done += batch_size
            if time.perf_counter() - start > seconds:
                break
    return done / (time.perf_counter() - start)


class _NoCheckpoint:
    def save_last(self, trainer: Trainer, epoch: int) -> None:
        pass


def fitted(recipe, feed: Feed, dataset, targets: torch.Tensor, epochs: int, classes: int,
           pretrained: bool = True) -> list[float]:
    """Images per second of each epoch of ``Trainer.fit`` (one loader for all of them), a fresh model each call."""
    recipe = recipe.model_copy(update={"epochs": epochs, "progressive_from": 0})
    model = create_backbone(recipe.backbone, num_classes=classes, pretrained=pretrained)
    model = model.to(feed.device, memory_format=torch.channels_last)
    steps, _ = training_steps(len(dataset), recipe.batch_size, 1)
    trainer = Trainer(model, recipe, feed, steps_per_epoch=steps)
    speeds = []
    images = FoldImages(0, dataset, targets, [], np.array([], np.int64), lambda proba: 0.0)
    trainer.fit(images, _NoCheckpoint(), 0, lambda epoch, figures: speeds.append(figures["train_images_per_s"]))
    return speeds


def main() -> None:
    params = load_params()
    model_name = next(iter(params.finetune.models))
    recipe = params.finetune.recipe(model_name)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=model_name, help="a model of finetune.models")
    parser.add_argument("--batch-size", type=int, default=recipe.batch_size)
    parser.add_argument("--image-size", type=int, default=recipe.image_size)
    parser.add_argument("--workers", default=params.finetune.workers, type=lambda v: v if v == "auto" else int(v))
    parser.add_argument("--images", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--epochs", type=int, default=2, help="of (b): the first, and the last as the steady one")
    parser.add_argument("--main-threads", type=int, nargs="+", default=[0], help="torch threads of the main "
                        "process while the loop runs, one (b) each (0: as the stage leaves them)")
    parser.add_argument("--augment-on", nargs="+", choices=["auto", "cpu", "device"],
                        default=[params.finetune.augment_on], help="where images are augmented, one (b) each")
    args = parser.parse_args()
    recipe = params.finetune.recipe(args.model).model_copy(update={"batch_size": args.batch_size,
                                                                    "image_size": args.image_size})

    spec = load_spec(params.competition)
    labels = RunImages.load(spec.slug).train
    frames = load_frames(frames_dir(spec.slug))
    cycled = np.arange(args.images or len(labels)) % len(labels)
    rows = frames.rows("train", labels.img)[cycled]
    device = pick_device()
    workers = loader_workers(args.workers, device.type, share())
    model = create_backbone(recipe.backbone, num_classes=len(spec.classes))
    model = model.to(device, memory_format=torch.channels_last)
    config = data_config(model)
    feed = Feed.on(device, args.batch_size, workers, config["mean"], config["std"], params.finetune.amp)
    print(f"{recipe.backbone} at {args.image_size}px, batch {args.batch_size}, {workers} workers, {device}"
          f"{' ' + torch.cuda.get_device_name() if device.type == 'cuda' else ''}, precision={feed.precision or 'float32'}")
    targets = torch.as_tensor(spec.class_indices(labels.label)[cycled])
    steady = {}
    for augment_on in args.augment_on:
        dataset = augmented_images(frames.both, rows, params.augment, recipe, augment_on, device)
        for threads in args.main_threads:
            if threads:
                torch.set_num_threads(threads)
            speeds = fitted(recipe, feed, dataset, targets, args.epochs, len(spec.classes))
            where = f"augmented on the {resolve_augment_on(augment_on, device)}, {torch.get_num_threads()} threads"
            steady[where] = speeds[-1]
            print(f"(b) the stage's fit:           {speeds[-1]:9.1f} img/s steady, first epoch {speeds[0]:.1f} img/s: "
                  f"{speeds[-1] / speeds[0]:.2f}x as long (target <= 1.3)  ({len(rows)} images x {args.epochs} "
                  f"epochs, {where})")
    # After (b): the convolutions' plans are made by then, as in any fold after its first steps.
    forward_backward = model_only(Trainer(model, recipe, feed, steps_per_epoch=10**6), args.image_size, args.seconds)
    print(f"(a) model-only train step:     {forward_backward:9.1f} img/s")
    for where, speed in steady.items():
        print(f"    ratio b/a:                 {speed / forward_backward:9.2f}  (target >= 0.8 on a GPU; {where})")
    tiny = fitted(recipe.model_copy(update={"backbone": "test_efficientnet"}), feed,
                  augmented_images(frames.both, rows, params.augment, recipe, args.augment_on[-1], device), targets, 2,
                  len(spec.classes), pretrained=False)
    print(f"(c) the loop with a tiny model: {1e3 * args.batch_size / tiny[-1]:8.2f} ms a step ({tiny[-1]:.1f} img/s): "
          f"the input path and the loop's own work")
    report(*breakdown(args.image_size, min(len(rows), 300), augmented=True), model_ms=1e3 / forward_backward)


if __name__ == "__main__":
    main()
