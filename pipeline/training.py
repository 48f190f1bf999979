"""Pieces every training loop shares: the device, seeding and the warm-up + cosine schedule."""
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


def pick_device(local_rank: int = 0) -> torch.device:
    """The GPU of this process (``LOCAL_RANK`` under torchrun) when there is one, else the CPU."""
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def gpu_capability(device: torch.device) -> tuple[int, int] | None:
    """The GPU's compute capability (8, 0) for an A100, (7, 5) for a T4; None for any other device."""
    return torch.cuda.get_device_capability(device) if device.type == "cuda" else None
