"""Pooled features of a frozen backbone, batch by batch into an array: what the features stage runs for each view
and augmented pass, and what bench/features.py times."""
from __future__ import annotations

import time

import numpy as np
import torch

from pipeline.errors import PipelineError
from pipeline.progress import progress
from pipeline.views.device_views import DeviceViews
from pipeline.views.image_data import Feed, FrameImages, padded


def extract(model: torch.nn.Module, dataset: FrameImages | DeviceViews, out: np.ndarray, feed: Feed,
            label: str, names: list[str]) -> float:
    """Fill ``out`` [len(dataset), dim] with pooled features; return images per second. The features stay on the
    device until the last batch, then are copied and checked once: a copy a batch would make the host wait for each
    one."""
    start, made = time.perf_counter(), torch.zeros((len(dataset), out.shape[1]), dtype=torch.float16,
                                                   device=feed.device)
    with torch.inference_mode(), progress(total=len(dataset), desc=label) as bar:
        for indices, inputs in feed.inputs(feed.loader(dataset)):
            count = len(indices)
            if feed.pad_predictions:  # one shape for every batch; the padding is cut off below
                inputs = padded(inputs, feed.batch_size)
            with feed.autocast():
                features = model(inputs)[:count]
            made[indices.to(feed.device, non_blocking=True)] = features.float().to(torch.float16)  # overflow: inf
            bar.update(count)
    chunk = made.cpu().numpy()
    if not np.isfinite(chunk).all():  # float16 overflows past 65504; catch it here, not in a submission
        bad = names[int(np.nonzero(~np.isfinite(chunk).all(1))[0][0])]
        raise PipelineError(f"{bad}: {label}: non-finite features")
    out[:] = chunk
    return len(dataset) / (time.perf_counter() - start)
