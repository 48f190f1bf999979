"""Which device a process computes on, and what it is: the only ``torch.cuda`` calls, one line each. Every decision
taken from them is a pure function of their answers (pipeline/compute/machine.py), tested on a CPU."""
from __future__ import annotations

import torch


def pick_device(local_rank: int = 0) -> torch.device:
    """The GPU of this process (``LOCAL_RANK`` under torchrun) when there is one, else the CPU."""
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def device_memory(device: torch.device) -> tuple[int, int] | None:
    """(free, total) bytes of the GPU's memory; None for any other device."""
    return torch.cuda.mem_get_info(device) if device.type == "cuda" else None


def gpu_capability(device: torch.device) -> tuple[int, int] | None:
    """The GPU's compute capability (8, 0) for an A100, (7, 5) for a T4; None for any other device."""
    return torch.cuda.get_device_capability(device) if device.type == "cuda" else None


def device_name(device: torch.device) -> str:
    """What the device is, for the metrics a run records: ``Tesla T4``, ``NVIDIA H200``, ``cpu``."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
