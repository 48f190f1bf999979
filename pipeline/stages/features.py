"""features stage: pooled pre-logit features of one pretrained backbone for every train and test image.

The convolutional body is the slow part and does not change between head
experiments, so it runs once per backbone; heads then train in seconds.
Reads params ``competition``, ``features`` (this backbone's entry) and
``augment``; the run's images (pipeline/data/tables.py) from the frame cache (pipeline/data/frames.py). Writes
``data/features/<competition>/<backbone>/`` in the format ``pipeline/training/feature_cache.py``
describes (per-view float16 arrays for train and test, augmented passes, index
CSVs, ``features.json``). Arrays are filled batch by batch on disk, so memory
stays flat however large the competition.

    python -m pipeline.stages.features tf_efficientnet_lite0
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import torch

from pipeline.atomic import atomic_dir
from pipeline.compute.cores import stage_command
from pipeline.compute.devices import pick_device
from pipeline.config import Params, load_params
from pipeline.data.competitions import CompetitionSpec, augment_of, competition_of
from pipeline.data.frames import Frames, load_frames
from pipeline.data.tables import RunImages
from pipeline.errors import PipelineError
from pipeline.paths import features_dir, frames_dir
from pipeline.training.backbones import create_backbone, data_config
from pipeline.training.extraction import extract
from pipeline.training.feature_cache import AUGMENTED, new_array, views_file, write_index, write_meta
from pipeline.views.augment import train_transform
from pipeline.views.device_views import ViewRecipe, view_images
from pipeline.views.image_data import Feed, FrameImages, frames_on, made_where

log = logging.getLogger(__name__)


def cache_features(backbone: str, params: Params, spec: CompetitionSpec, images: RunImages, frames: Frames,
                   out_dir: Path, device: torch.device) -> dict:
    """Write one backbone's feature set into ``out_dir`` (empty); return its features.json content."""
    settings, size = params.features, params.features.backbones[backbone].image_size
    model = create_backbone(backbone, num_classes=0, param_key=f"features.backbones.{backbone}")
    model = model.eval().to(device, memory_format=torch.channels_last)
    config = data_config(model)
    feed = Feed.on(device, settings.batch_size, settings.workers, config["mean"], config["std"], settings.amp)
    ids = {"train": list(images.train.img), "test": list(images.test.img)}
    rows = {split: frames.rows(split, ids[split]) for split in ids}
    archives = {"train": images.raw / spec.train_archive, "test": images.raw / spec.test_archive}
    names = {split: [f"{archives[split]}:{member}" for member in getattr(images, split).member] for split in ids}
    write_index(out_dir, "train", images.train.img)
    write_index(out_dir, "test", images.test.img)

    speeds = []
    arrays = frames_on(frames, made_where(settings.views_on, device), device)  # on a GPU they fit, uploaded once
    for split in ("train", "test"):
        shape = (len(settings.test_views), len(ids[split]), model.num_features)
        views = new_array(out_dir, views_file(split), shape)
        for v, view in enumerate(settings.test_views):
            dataset = view_images(ViewRecipe(settings.views_on, size, config["interpolation"]), view, arrays,
                                  rows[split], device)
            speeds.append(extract(model, dataset, views[v], feed, f"{backbone} {split} {view}", names[split]))
        views.flush()
    if settings.train_passes:
        augmented = new_array(out_dir, AUGMENTED, (settings.train_passes, len(ids["train"]), model.num_features))
        for p in range(settings.train_passes):
            # One seed per (pass, image): the same augmentation whatever the worker count.
            seeds = np.random.SeedSequence([settings.seed, p]).generate_state(len(ids["train"]))
            transform = train_transform(augment_of(params, spec), size, settings.seed)
            dataset = FrameImages(frames.both, rows["train"], transform, size, seeds=seeds)
            speeds.append(extract(model, dataset, augmented[p], feed, f"{backbone} train pass {p + 1}",
                                  names["train"]))
        augmented.flush()
    meta = {"backbone": backbone, "image_size": size, "dim": model.num_features,
            "test_views": list(settings.test_views),
            "train_passes": settings.train_passes, "mean": list(config["mean"]), "std": list(config["std"]),
            "interpolation": config["interpolation"], "n_train": len(ids["train"]), "n_test": len(ids["test"])}
    write_meta(out_dir, meta)
    log.info("%s: %d train and %d test images, %d views, %d augmented passes, %.1f img/s on %s", backbone,
             meta["n_train"], meta["n_test"], len(settings.test_views), settings.train_passes,
             float(np.mean(speeds)), device)
    return meta


@stage_command
def main() -> None:
    params = load_params()
    if len(sys.argv) != 2:
        raise PipelineError("usage: python -m pipeline.stages.features <backbone listed under features.backbones>")
    backbone = sys.argv[1]
    if backbone not in params.features.backbones:
        raise PipelineError(f"params.yaml: features.backbones: {backbone!r} is not listed "
                            f"(listed: {', '.join(params.features.backbones)})")
    spec = competition_of(params)
    target = features_dir(spec.slug, backbone)
    with atomic_dir(target) as tmp:
        cache_features(backbone, params, spec, RunImages.load(spec.slug), load_frames(frames_dir(spec.slug)), tmp,
                       pick_device())
    log.info("wrote %s", target)


if __name__ == "__main__":
    main()
