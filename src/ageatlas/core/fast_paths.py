"""The GPU's fast paths (bf16 autocast, channels_last, fused Adam, pinned memory) and whether a
job takes them.

On CUDA, training and prediction take them all. On the CPU they are off by
default (bf16 convolutions are slower there, and the numbers the tests
check were made in float32), but ``gpu_paths=True`` takes them on the CPU
too, so that tests drive the code a GPU runs before any GPU has run it:
autocast with ``device_type="cpu"``, channels_last(_3d) tensors, Adam's
fused CPU kernel (torch >= 2.4), and DataLoader's ``pin_memory=True``,
which torch accepts without an accelerator but drops with a warning (only
the flag's path is tested there, not pinning itself).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FastPaths:
    """What a training or prediction process does on its device; the defaults are the slow
    path."""

    device: torch.device
    bf16: bool = False  # bfloat16 autocast around forward passes
    memory_format: torch.memory_format = torch.contiguous_format  # of inputs and weights
    fused_adam: bool = False
    pin_memory: bool = False  # DataLoader's pinned host memory for asynchronous copies
    warm_up: bool = False  # an untimed pass per new input shape (cuDNN autotunes each)

    def autocast(self):
        if not self.bf16:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def describe(self) -> str:
        parts = ["bf16 autocast" if self.bf16 else "float32"]
        if self.memory_format != torch.contiguous_format:
            parts.append("channels_last")
        if self.fused_adam:
            parts.append("fused Adam")
        return ", ".join(parts)


def fast_paths(
    device: str | torch.device,
    *,
    bf16: bool = True,
    channels_last: torch.memory_format | None = None,
    gpu_paths: bool | None = None,
) -> FastPaths:
    """The paths a job on `device` takes: `gpu_paths` None means on CUDA only, True or False
    forces them on or off. `bf16` and `channels_last` (the model's layout, None: not wanted) are
    the config's wishes; bf16 is dropped on a GPU without it."""
    device = torch.device(device)
    on = device.type == "cuda" if gpu_paths is None else bool(gpu_paths)
    if not on:
        return FastPaths(device)
    return FastPaths(
        device,
        bf16=bf16 and bf16_supported(device),
        memory_format=channels_last or torch.contiguous_format,
        fused_adam=device.type in ("cuda", "cpu"),
        pin_memory=True,
        warm_up=True,
    )


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu"  # autocast on the CPU has bfloat16 kernels everywhere
