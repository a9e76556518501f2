"""A training process's state, and the resumable ``state.pt`` it leaves after every epoch.

`Job` holds what one process works with (model, optimiser, scheduler, loader
generator), `Progress` what the epochs so far have found. Every epoch ends
with ``out_dir/state.pt`` (model, optimiser, scheduler, progress, RNG states,
metrics, best weights so far), written atomically, so a killed job restarts
at the next epoch and, on the CPU, ends with exactly the weights an
uninterrupted run would have. A state written for another config or other
data (file names, ages, sizes, mtimes) is moved to ``state.stale.pt`` and
training starts afresh.
"""

from __future__ import annotations

import logging
import math
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ageatlas.age.train_config import TrainConfig
from ageatlas.core.fast_paths import FastPaths
from ageatlas.core.files import atomic_write

# The training loop's logger (train.py's): log filters set on it also see the resume warnings.
log = logging.getLogger("ageatlas.age.train")

STATE = "state.pt"
STALE_STATE = "state.stale.pt"


@dataclass
class Progress:
    epoch: int = 0  # last finished epoch
    best_val_mae: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the best one (early stopping)
    metrics: list[dict] = field(default_factory=list)
    best_model: dict | None = None


@dataclass
class Job:
    """What one training process works with."""

    rank: int
    world: int
    device: torch.device
    config: TrainConfig
    out_dir: Path
    model: nn.Module
    wrapped: torch.nn.Module  # model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler  # plateau or cosine: train.lr_scheduler
    generator: torch.Generator
    paths: FastPaths  # bf16, channels_last, fused Adam, pinned memory: on CUDA or when asked
    accumulate: int  # steps per process
    # the moving average of the weights (config.ema_decay), or None
    average: torch.optim.swa_utils.AveragedModel | None = None

    @property
    def evaluated(self) -> nn.Module:
        """The weights validated and kept: the moving average when there is one."""
        return self.model if self.average is None else self.average.module


def check_state(out_dir: Path, keys: dict) -> bool:
    """True when out_dir/state.pt belongs to this config and data; a foreign state is set aside."""
    for leftover in out_dir.glob(".*.tmp"):  # a write cut off by a kill
        leftover.unlink()
    path = out_dir / STATE
    if not path.exists():
        return False
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        differs = [k.split("_")[0] for k in keys if state.get(k) != keys[k]]
    except Exception as error:  # noqa: BLE001 - an unreadable state is set aside, never fatal
        differs = [f"unreadable ({error})"]
    if not differs:
        return True
    os.replace(path, out_dir / STALE_STATE)
    log.warning(
        "%s was written for another %s: starting afresh, the old state is kept as %s",
        path,
        " and ".join(differs),
        STALE_STATE,
    )
    return False


def save_state(job: Job, progress: Progress, keys: dict) -> None:
    state = {
        **keys,
        "config": asdict(job.config),
        "world_size": job.world,
        "epoch": progress.epoch,
        "best_val_mae": progress.best_val_mae,
        "best_epoch": progress.best_epoch,
        "bad_epochs": progress.bad_epochs,
        "metrics": progress.metrics,
        "best_model": progress.best_model,
        "model": job.model.state_dict(),
        "average": None if job.average is None else job.average.state_dict(),
        "optimizer": job.optimizer.state_dict(),
        "scheduler": job.scheduler.state_dict(),
        "rng": _rng_state(job.generator, job.device),
    }
    atomic_write(job.out_dir / STATE, lambda f: torch.save(state, f))


def load_state(job: Job) -> Progress:
    state = torch.load(job.out_dir / STATE, map_location="cpu", weights_only=True)
    job.model.load_state_dict(state["model"])
    if job.average is not None:
        job.average.load_state_dict(state["average"])
    job.optimizer.load_state_dict(state["optimizer"])
    job.scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"], job.generator, job.device)
    if state["world_size"] != job.world and job.rank == 0:
        log.warning(
            "the saved state comes from %d process(es), this run has %d: the data order changes",
            state["world_size"],
            job.world,
        )
    fields = ("epoch", "best_val_mae", "best_epoch", "bad_epochs", "metrics", "best_model")
    return Progress(**{name: state[name] for name in fields})


def _rng_state(generator: torch.Generator, device: torch.device) -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "random": random.getstate(),
        "loader": generator.get_state(),
    }


def _set_rng_state(state: dict, generator: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    random.setstate(state["random"])
    generator.set_state(state["loader"])
