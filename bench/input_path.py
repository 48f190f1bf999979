"""Where one image's CPU time goes on its way to the model: read, decode, each augmentation step, collate, pin, copy.

Shared by bench/features.py and bench/finetune.py, which print it next to the model's own time per
image, so "the GPU waits for the CPU" is a number per step, not a guess. Times are medians over the
images, in one process with one OpenCV thread (what each DataLoader worker is). Also measured:
what reseeding the transform per image costs (the stage does it so augmentation does not depend on
worker count), the same augmentation with the crop first (Affine then runs on the small crop,
not on the 320x240 decoded frame), and the same augmentation on whole batches on the model's device with kornia
(``finetune.augment_on: device``).

    python bench/input_path.py [--image-size 224] [--images 300]       # on its own
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import albumentations as A
import cv2
import numpy as np
import torch

from pipeline.augment import AugmentRanges, train_transform, view_transform
from pipeline.competitions import load_spec
from pipeline.config import load_params
from pipeline.decoding import decode_rgb
from pipeline.device_augment import DeviceAugment
from pipeline.image_data import pick_device
from pipeline.images import CompetitionImages
from pipeline.sample import RunImages


def _median_ms(function: Callable[[object], object], items: list) -> tuple[float, list]:
    """Median milliseconds of ``function`` over ``items``, and its results."""
    results, times = [], []
    for item in items:
        start = time.perf_counter()
        results.append(function(item))
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), results


def _device_augment_ms(params, image_size: int, frames: list[np.ndarray]) -> float:
    """Milliseconds per image of ``finetune.augment_on: device`` (pipeline/device_augment.py), batches of 64."""
    device = pick_device()
    augment = DeviceAugment(AugmentRanges.of(params.augment), image_size)
    same_size = [f for f in frames if f.shape == frames[0].shape][:64]
    batch = torch.from_numpy(np.stack(same_size)).to(device).permute(0, 3, 1, 2).float().div(255)

    def run(_: int) -> None:
        augment(batch)
        if device.type == "cuda":
            torch.cuda.synchronize()

    run(0)  # warm-up
    return _median_ms(run, list(range(5)))[0] / len(same_size)


def breakdown(image_size: int, n_images: int, augmented: bool) -> tuple[dict[str, float], dict[str, float]]:
    """Milliseconds per image for each step of the input path on this machine's CPU (and GPU, if any), and
    for alternatives that are not in the path."""
    cv2.setNumThreads(1)
    params = load_params()
    spec = load_spec(params.competition)
    images = RunImages.load(spec.slug)
    archive = CompetitionImages(images.raw, spec)
    members = list(images.train.member[:n_images])
    steps: dict[str, float] = {}
    alternatives: dict[str, float] = {}
    steps["zip read"], data = _median_ms(archive.read_bytes, members)
    steps["JPEG decode (reduced size)"], decoded = _median_ms(
        lambda d: decode_rgb(d, "bench", (image_size, image_size)), data)
    transform = train_transform(params.augment, image_size, 0) if augmented else view_transform("full", image_size)
    current = decoded
    for step in transform.transforms:
        single = A.Compose([step], seed=0)
        steps[f"  {type(step).__name__}"], current = _median_ms(lambda im: single(image=im)["image"], current)
    steps["reseed the transform (per image)"], _ = _median_ms(lambda s: transform.set_random_seed(int(s)),
                                                              list(range(len(members))))
    if augmented:
        crop_first = A.Compose([transform.transforms[1], transform.transforms[0], *transform.transforms[2:]], seed=0)
        alternatives["the whole augmentation, as it is"], _ = _median_ms(lambda im: transform(image=im)["image"],
                                                                         decoded)
        alternatives["the whole augmentation, crop first"], _ = _median_ms(lambda im: crop_first(image=im)["image"],
                                                                           decoded)
        alternatives[f"the same with kornia on the {pick_device().type}, batch 64"] = \
            _device_augment_ms(params, image_size, decoded)
    batch = 64
    stack_ms, stacked = _median_ms(lambda i: torch.from_numpy(np.stack(current[i:i + batch])),
                                   list(range(0, len(current) - batch + 1, batch)) or [0])
    steps["collate (per image)"] = stack_ms / batch
    device = pick_device()
    if device.type == "cuda":
        pin_ms, pinned = _median_ms(lambda t: t.pin_memory(), stacked)
        steps["pin memory (per image)"] = pin_ms / batch
        copy_ms, _ = _median_ms(lambda t: (t.to(device, non_blocking=True), torch.cuda.synchronize()), pinned)
        steps["host -> device (per image)"] = copy_ms / batch
    return steps, alternatives


def report(steps: dict[str, float], alternatives: dict[str, float], model_ms: float) -> None:
    """Print each step and what it means: how many CPU cores would keep up with the model."""
    total = sum(steps.values())
    print("Input path, time per image on one CPU core (median):")
    for name, value in steps.items():
        print(f"  {name:38s} {value:7.2f} ms")
    print(f"  {'all of it':38s} {total:7.2f} ms")
    for name, value in alternatives.items():
        print(f"  {name:38s} {value:7.2f} ms   (not a step; for comparison)")
    print(f"  {'the model, per image':38s} {model_ms:7.2f} ms")
    print(f"  CPU cores the input path needs to keep up with the model: {total / model_ms:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--view", action="store_true", help="the features stage's view instead of augmentation")
    args = parser.parse_args()
    steps, alternatives = breakdown(args.image_size, args.images, augmented=not args.view)
    report(steps, alternatives, model_ms=float("nan"))


if __name__ == "__main__":
    main()
