"""Pieces every training loop shares: seeding, the warm-up + cosine schedule and the EMA's settings."""
from __future__ import annotations

import math
import random
from typing import Callable

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """The one place seeds are set (Python, NumPy, torch on every device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def warmup_cosine_factor(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Learning-rate factor per step: linear warm-up to 1, then cosine decay to zero."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """``warmup_cosine_factor`` on every parameter group, stepped once per batch."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine_factor(warmup_steps, total_steps))


def ema_settings(ema_decay: float, ema_half_life: float, steps_per_epoch: int, warmup: bool = True) -> dict | None:
    """timm ``ModelEmaV3``'s arguments for a recipe, or None (no EMA of the weights).

    ``ema_half_life`` (epochs): a step's weight in the average halves every that many epochs of *this* run's
    steps; before that binds, timm's warm-up at power 1 and gamma 1 makes the average the plain mean of the steps
    so far (decay (k - 1) / k at the k-th update: the first replaces the starting weights outright). Both are
    measured in the run's own steps, so the same recipe averages the same share of its run on 1,400 photos (11
    steps an epoch at batch 128) and on 22,000 (131); timm's default warm-up (power 2/3) is not: it holds the
    decay down for thousands of steps whatever the run's length. ``warmup=False``: the half-life from the first
    step, the starting weights decaying as any step's do (what a fixed 0.99 a step is at ~45 steps an epoch, the
    CPU preset's measured recipe, in a form that keeps its share of the run at any dataset size). ``ema_decay``: a
    fixed decay per step, no warm-up; on 11 steps an epoch a decay of 0.998 would still hold 88 % of the starting
    weights after 66 steps.
    """
    if ema_half_life:
        decay = 0.5 ** (1 / max(ema_half_life * steps_per_epoch, 1.0))
        if not warmup:
            return {"decay": decay}
        return {"decay": decay, "use_warmup": True, "warmup_gamma": 1.0, "warmup_power": 1.0}
    return {"decay": ema_decay} if ema_decay else None


def epoch_sizes(image_size: int, progressive_from: int, epochs: int) -> list[int]:
    """The training size of each epoch: ``image_size`` throughout, or with progressive resizing from
    ``progressive_from`` at the first epoch to ``image_size`` at the last in equal steps, each rounded to 16 px (a
    size the backbone's strides divide) and never past ``image_size``."""
    if not progressive_from or epochs == 1:
        return [image_size] * epochs
    steps = [progressive_from + (image_size - progressive_from) * e / (epochs - 1) for e in range(epochs)]
    return [min(image_size, max(16, 16 * round(size / 16))) for size in steps[:-1]] + [image_size]
