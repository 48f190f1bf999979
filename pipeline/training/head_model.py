"""The classifier a heads stage fits on a backbone's cached features: its shape and how it predicts. The heads stage
trains one per fold; a Kaggle notebook (pipeline/kaggle/inference.py) predicts with the saved ones."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


def make_head(dim: int, hidden: int, n_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm1d(dim), nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(hidden, n_classes))


def predict(head: nn.Module, views: np.ndarray) -> np.ndarray:
    """Softmax probabilities averaged over views ([views, n, dim] -> [n, classes]), on the head's device."""
    head.eval()
    device = next(head.parameters()).device
    with torch.inference_mode():
        return np.mean([head(torch.from_numpy(np.asarray(v, np.float32)).to(device)).softmax(-1).cpu().numpy()
                        for v in views], 0)
