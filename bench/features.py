"""Is feature caching bound by the model, or by its input path? Ratio of the two, measured in one run.

Prints, for one backbone at one batch size on this machine:
(a) model-only forward throughput on random tensors already on the device,
(b) end-to-end throughput of the features stage's own code path, once per place views are made
    (``features.views_on``): cpu (cached frames -> crop and resize with albumentations -> DataLoader
    -> device) and, on a GPU, device (cached frames copied by the workers, cropped and resized on the
    GPU), each -> float16 memmap,
the first pass against a steady second one (target: the first <= 1.3x as long), their ratios b/a (target >= 0.8),
(c) the same path with timm's tiny ``test_efficientnet``, whose milliseconds per batch are the input path's and the
loop's own cost, a figure a CPU can move (as bench/finetune.py prints for fine-tuning), and peak RSS of this process
and its workers.
Reads the run's frame cache (`dvc repro frames`); ``--images`` cycles its train frames to make a run
long enough for a GPU.

    python bench/features.py                                   # CPU, params.yaml's batch size and workers
    python bench/features.py --batch-size 256 --images 100000   # a GPU machine (16 cores: 15 workers)
"""
from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.compute.cores import share
from pipeline.compute.devices import pick_device
from pipeline.compute.machine import loader_workers
from pipeline.config import load_params
from pipeline.data.competitions import load_spec
from pipeline.data.frames import load_frames
from pipeline.paths import frames_dir
from pipeline.training.backbones import create_backbone, data_config
from pipeline.training.extraction import extract
from pipeline.views.device_views import ViewRecipe, view_images
from pipeline.views.image_data import Feed
from input_path import breakdown, report  # bench/input_path.py, beside this script


def model_only(model, batch_size: int, size: int, feed: Feed, seconds: float) -> float:
    device = feed.device
    batch = torch.randn(batch_size, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    done, start = 0, None
    with torch.inference_mode(), feed.autocast():
        for step in range(10_000):
            if step == 2:  # two warm-up batches (cudnn autotune, allocator)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            model(batch).float().cpu()  # the same device->host copy the stage makes
            if start is not None:
                done += batch_size
                if time.perf_counter() - start > seconds:
                    break
    return done / (time.perf_counter() - start)


def main() -> None:
    params = load_params()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default=next(iter(params.features.backbones)))
    parser.add_argument("--batch-size", type=int, default=params.features.batch_size)
    parser.add_argument("--workers", default=params.features.workers, type=lambda v: v if v == "auto" else int(v))
    parser.add_argument("--images", type=int, default=0, help="images for (b), cycling the train set (0: all once)")
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of (a)")
    parser.add_argument("--views-on", nargs="+", choices=["cpu", "device"], help="where (b) makes its views "
                        "(default: cpu, and device on a GPU)")
    args = parser.parse_args()

    spec = load_spec(params.competition)
    frames = load_frames(frames_dir(spec.slug))
    count = len(frames.arrays["train"])
    rows = np.arange(args.images or count) % count
    names = [f"train frame {row}" for row in rows]
    size = params.features.backbones.get(args.backbone, next(iter(params.features.backbones.values()))).image_size
    device = pick_device()
    places = args.views_on or (["cpu", "device"] if device.type == "cuda" else ["cpu"])
    args.workers = loader_workers(args.workers, device.type, share())
    model = create_backbone(args.backbone).eval().to(device, memory_format=torch.channels_last)
    config = data_config(model)
    print(f"{args.backbone} at {size}px, batch {args.batch_size}, {args.workers} workers, {device}"
          f"{' ' + torch.cuda.get_device_name() if device.type == 'cuda' else ''}, amp={params.features.amp}, "
          f"{torch.get_num_threads()} torch threads")

    feed = Feed.on(device, args.batch_size, args.workers, config["mean"], config["std"], params.features.amp)
    forward = model_only(model, args.batch_size, size, feed, args.seconds)
    print(f"(a) model-only forward:        {forward:9.1f} img/s")

    def end_to_end(net, place: str, label: str) -> float:
        dataset = view_images(ViewRecipe(place, size, config["interpolation"]), "full", frames.both, rows, device)
        with tempfile.TemporaryDirectory() as tmp:
            out = np.lib.format.open_memmap(Path(tmp) / "bench.npy", mode="w+", dtype=np.float16,
                                            shape=(len(rows), net.num_features))
            return extract(net, dataset, out, feed, label, names)

    for place in places:
        # The stage's pass once cold (a GPU plans each convolution shape in its first batches), then again steady.
        first = end_to_end(model, place, f"first pass, views on {place}")
        steady = end_to_end(model, place, f"steady pass, views on {place}")
        print(f"(b) end-to-end, views on {place:6s} {steady:9.1f} img/s steady, first pass {first:.1f} img/s: "
              f"{steady / first:.2f}x as long (target <= 1.3)  ({len(rows)} images)")
        print(f"    ratio b/a:                   {steady / forward:9.2f}  (target >= 0.8)")
    # timm's test_efficientnet: so small that the path's own work (frames, views, loader, copies) is what it times
    tiny = create_backbone("test_efficientnet", pretrained=False).eval().to(device, memory_format=torch.channels_last)
    path = end_to_end(tiny, places[-1], "a tiny model")
    print(f"(c) the path with a tiny model: {1e3 * args.batch_size / path:8.2f} ms a batch ({path:.1f} img/s): the input "
          f"path and the loop's own work, views on {places[-1]}")
    report(*breakdown(size, min(len(rows), 300), augmented=False), model_ms=1e3 / forward)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak RSS: {own:.0f} MiB main process, {workers:.0f} MiB largest worker")


if __name__ == "__main__":
    main()
