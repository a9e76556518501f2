"""The training config, and the digests that tie a saved state to its config and data.

The config's class says which model, which input files, which augmentation
and which loss (`TrainConfig` the 3D model, `ageatlas.baseline.model.BaselineConfig`
the projections' VGG16); the training loop, resume, DDP and prediction are shared.

The defaults are the authors' recipe (docs/sources.md): L1 loss, Adam lr 1e-4,
batch 1 with 32 accumulated steps, ReduceLROnPlateau(0.1, patience 3) on
validation MAE, 100 epochs, seed 42. Additions: the output bias starts at
the training mean age (``init_output_bias``, so short runs start at the mean
predictor instead of at 0 years), optional early stopping, optional
precise BatchNorm statistics (``precise_bn``) and an optional moving average
of the weights (``ema_decay``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from ageatlas.age.model import build_model
from ageatlas.age.train_data import CacheDataset
from ageatlas.core.fast_paths import FastPaths, fast_paths

# Settings that do not change the numbers of the epochs already run: a run
# may resume under other values (e.g. more epochs).
RESUMABLE_SETTINGS = ("epochs", "early_stopping", "num_workers")


@dataclass
class TrainConfig:
    epochs: int = 100
    lr: float = 1e-4
    batch_size: int = 1  # per process
    # effective batch = batch_size * accumulate samples, whatever the world size
    accumulate: int = 32
    # "plateau" (the authors): ReduceLROnPlateau on validation MAE; "cosine": the lr falls
    # from `lr` to 0 along a half cosine over `epochs`, so the last epochs take small steps
    # whatever validation does (then `epochs` changes the numbers and is not resumable).
    lr_schedule: str = "plateau"
    plateau_factor: float = 0.1
    plateau_patience: int = 3
    early_stopping: int | None = None  # patience in epochs, None = off
    seed: int = 42
    num_workers: int = 0
    bf16: bool = True  # on CUDA (or with gpu_paths): ageatlas.core.fast_paths
    channels_last: bool = True  # on CUDA (or with gpu_paths)
    pretrained: str | None = None
    hidden: int = 256
    init_output_bias: bool = True  # start at the training mean age (the authors start at 0)
    # Recompute BatchNorm's running statistics on the training set after each epoch, before
    # validation ("precise BN"; the authors: off). Small batches of few samples let the running
    # averages lag the weights, and eval mode then predicts something else than training did.
    precise_bn: bool = False
    # Validate, keep and predict with an exponential moving average of the weights, updated
    # after every optimizer step (torch.optim.swa_utils; 0 = off, the authors). On a few
    # dozen training volumes the weights of one epoch jump, and so do the maps drawn from them.
    ema_decay: float = 0.0

    # What a model family defines; the 2.5D baseline (ageatlas.baseline.model.BaselineConfig)
    # overrides these, the training loop, resume, DDP and prediction are shared.

    # The channels_last layout of the family's inputs (a class constant, not a setting:
    # it stays out of the state's config key).
    CHANNELS_LAST: ClassVar[torch.memory_format] = torch.channels_last_3d

    @classmethod
    def from_dict(cls, settings: dict) -> TrainConfig:
        """The config of a checkpoint's or state's `config` record; keys it lacks take defaults."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in settings.items() if k in names})

    def build_model(self, pretrained: bool = True) -> nn.Module:
        """The untrained model; `pretrained` False skips local weights (a checkpoint follows)."""
        return build_model(self.pretrained if pretrained else None, self.hidden)

    def dataset(self, items: Sequence[tuple[str, float]]) -> Dataset:
        """The inputs: caches whose background noise is drawn from this run's seed."""
        return CacheDataset(items, seed=self.seed)

    def fast_paths(self, device: torch.device, gpu_paths: bool | None = None) -> FastPaths:
        """The GPU paths this config takes on `device` (gpu_paths None: on CUDA only)."""
        return fast_paths(
            device,
            bf16=self.bf16,
            channels_last=self.CHANNELS_LAST if self.channels_last else None,
            gpu_paths=gpu_paths,
        )

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A training batch on the device, augmented (none for the 3D model)."""
        return x

    def sample_loss(self, error: torch.Tensor) -> torch.Tensor:
        """Per-sample loss of predicted - true age: L1 (the authors)."""
        return error.abs()


def config_key(config: TrainConfig) -> str:
    resumable = set(RESUMABLE_SETTINGS)
    if config.lr_schedule == "cosine":  # the schedule's length is part of every epoch's lr
        resumable.discard("epochs")
    settings = {k: v for k, v in asdict(config).items() if k not in resumable}
    return _digest(settings)


def data_key(
    train_items: Sequence[tuple[str, float]], val_items: Sequence[tuple[str, float]]
) -> str:
    """Names, ages, sizes and mtimes of the caches: a re-made cache invalidates a saved state."""

    def describe(items):
        rows = []
        for path, age in items:
            stat = os.stat(path)
            rows.append([Path(path).name, float(age), stat.st_size, stat.st_mtime_ns])
        return rows

    return _digest([describe(train_items), describe(val_items)])


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
