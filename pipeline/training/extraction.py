"""Pooled features of a frozen backbone, batch by batch into an array: what the features stage runs for each view
and augmented pass, and what bench/features.py times."""
from __future__ import annotations

import time

import numpy as np
import torch

from pipeline.errors import PipelineError
from pipeline.progress import progress
from pipeline.views.device_views import DeviceViews
from pipeline.views.image_data import Feed, FrameImages


def extract(model: torch.nn.Module, dataset: FrameImages | DeviceViews, out: np.ndarray, feed: Feed,
            label: str, names: list[str]) -> float:
    """Fill ``out`` [len(dataset), dim] with pooled features; return images per second."""
    start = time.perf_counter()
    with torch.inference_mode(), progress(total=len(dataset), desc=label) as bar:
        for indices, inputs in feed.inputs(feed.loader(dataset)):
            with feed.autocast():
                features = model(inputs)
            with np.errstate(over="ignore"):  # an overflow becomes inf, caught just below
                chunk = features.float().cpu().numpy().astype(np.float16)
            if not np.isfinite(chunk).all():  # float16 overflows past 65504; catch it here, not in a submission
                bad = names[int(indices[np.nonzero(~np.isfinite(chunk).all(1))[0][0]])]
                raise PipelineError(f"{bad}: {label}: non-finite features")
            out[indices.numpy()] = chunk
            bar.update(len(indices))
    return len(dataset) / (time.perf_counter() - start)
