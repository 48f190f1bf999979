"""Pieces every training loop shares: seeding, the warm-up + cosine schedule, early stopping."""
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


class EarlyStopping:
    """Remembers the best validation loss and its weights; says when ``patience`` epochs brought nothing better."""

    def __init__(self, patience: int):
        self.patience, self.best, self.best_epoch, self.best_state = patience, math.inf, -1, None

    def update(self, epoch: int, loss: float, model: torch.nn.Module) -> bool:
        """Record this epoch; True when training should stop."""
        if loss < self.best:
            self.best, self.best_epoch = loss, epoch
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return self.done(epoch)

    def done(self, epoch: int) -> bool:
        return epoch - self.best_epoch >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "best_state": self.best_state}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.best_state = state["best"], state["best_epoch"], state["best_state"]
