"""Which torch device a job runs on."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def pick_device(device: str | torch.device | None, task: str = "training") -> torch.device:
    """The given device, else CUDA when there is a GPU, else the CPU (logged: GPU rules fall
    back)."""
    if device is None:
        if torch.cuda.is_available():
            device = "cuda"
        else:
            log.warning("no GPU found: %s on the CPU", task)
            return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{task} on {device} was asked for, but torch sees no CUDA GPU")
    return device
