"""Where one image's CPU time goes on its way to the model: read, decode, each augmentation step, collate, pin, copy.

Shared by bench/features.py and bench/finetune.py, which print it next to the model's own time per
image, so "the GPU waits for the CPU" is a number per step, not a guess. Times are medians over the
images, in one process with one OpenCV thread (what each DataLoader worker is). Also measured:
what reseeding the transform per image costs (the stage does it so augmentation does not depend on
worker count), the same augmentation with the crop first (Affine then runs on the small crop,
not on the 320x240 decoded frame), and the same augmentation on whole batches on the model's device with kornia
(``finetune.augment_on: device``).

    python bench/input_path.py [--image-size 224] [--images 300]       # on its own

On its own it also prints, per CPU core, images per second from the JPEG path (zip -> reduced-size decode ->
view or augmentation) and from the frame cache (pipeline/data/frames.py: gather the decoded frames; the view or the
augmentation then runs on the GPU, or on the CPU when asked), and how many cores each needs to feed the H100's
model: 19,000 img/s for features, 4,300 for fine-tuning (docs/gpu.md). It reads ``data/frames/<competition>/``:
run ``dvc repro frames`` first.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import pipeline.offline  # noqa: F401  (first: it keeps albumentations from calling PyPI)
import albumentations as A
import cv2
import numpy as np
import torch

from pipeline.compute.devices import pick_device
from pipeline.config import load_params
from pipeline.data.competitions import load_spec
from pipeline.data.decoding import decode_rgb
from pipeline.data.frames import gather, load_frames
from pipeline.data.images import CompetitionImages
from pipeline.data.tables import RunImages
from pipeline.paths import frames_dir
from pipeline.views.augment import AugmentRanges, train_transform, view_transform
from pipeline.views.device_augment import DeviceAugment

# The H100's model alone (docs/gpu.md): what the input path has to keep up with.
MODEL_IMAGES_PER_S = {"features": 19_000, "fine-tuning": 4_300}


def _median_ms(function: Callable[[object], object], items: list) -> tuple[float, list]:
    """Median milliseconds of ``function`` over ``items``, and its results."""
    results, times = [], []
    for item in items:
        start = time.perf_counter()
        results.append(function(item))
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), results


def _device_augment_ms(params, image_size: int, frames: list[np.ndarray]) -> float:
    """Milliseconds per image of ``finetune.augment_on: device`` (pipeline/views/device_augment.py), batches of 64."""
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


def jpeg_and_cache_paths(image_size: int, n_images: int) -> dict[str, dict[str, float]]:
    """Milliseconds per image on one core for each way to a model's batch: {work: {path: ms}}."""
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    params = load_params()
    spec = load_spec(params.competition)
    images = RunImages.load(spec.slug)
    archive = CompetitionImages(images.raw, spec)
    frames = load_frames(frames_dir(spec.slug))
    ids = list(images.train.img[:n_images])
    members = list(images.train.member[:n_images])
    rows = frames.rows("train", ids)
    view, augment = view_transform("full", image_size), train_transform(params.augment, image_size, 0)
    batch = 64

    def per_image(function, items) -> float:
        return _median_ms(function, items)[0]

    shuffled = np.random.default_rng(0).permutation(rows)

    def gather_batch(start: int, order: np.ndarray) -> torch.Tensor:  # what a worker does for the device paths
        return torch.from_numpy(gather(frames.both, order[start:start + batch]))

    starts = list(range(0, max(len(rows) - batch, 0) + 1, batch))
    in_order_ms = per_image(lambda start: gather_batch(start, rows), starts) / batch  # a test-time pass
    shuffled_ms = per_image(lambda start: gather_batch(start, shuffled), starts) / batch  # a training epoch
    decode_ms = per_image(lambda m: decode_rgb(archive.read_bytes(m), "bench", (image_size, image_size)), members)
    frame_list = [frames.both[0][r] for r in rows]
    view_ms, augment_ms = per_image(lambda f: view(image=f), frame_list), per_image(lambda f: augment(image=f),
                                                                                   frame_list)
    return {"features (a test-time view)": {"JPEG path (decode + view on the CPU)": decode_ms + view_ms,
                                            "cache path, view on the CPU": in_order_ms + view_ms,
                                            "cache path, view on the GPU (features.views_on)": in_order_ms},
            "fine-tuning (augmented)": {"JPEG path (decode + albumentations)": decode_ms + augment_ms,
                                        "cache path, albumentations on the CPU": shuffled_ms + augment_ms,
                                        "cache path, kornia on the GPU (finetune.augment_on)": shuffled_ms}}


def report_paths(paths: dict[str, dict[str, float]], image_size: int) -> None:
    print(f"Images per second per CPU core at {image_size} px, and the cores that feed the H100's model:")
    for (work, ways), model in zip(paths.items(), MODEL_IMAGES_PER_S.values()):
        print(f"  {work}: the model takes {model:,} img/s")
        for name, ms in ways.items():
            print(f"    {name:52s} {1e3 / ms:8.0f} img/s per core   {model * ms / 1e3:6.1f} cores")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--view", action="store_true", help="the features stage's view instead of augmentation")
    args = parser.parse_args()
    steps, alternatives = breakdown(args.image_size, args.images, augmented=not args.view)
    report(steps, alternatives, model_ms=float("nan"))
    report_paths(jpeg_and_cache_paths(args.image_size, args.images), args.image_size)


if __name__ == "__main__":
    main()
