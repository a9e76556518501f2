"""Shared by the age tests: small synthetic caches, and a small 3D model behind the real training
loop (the loop's paths are what those tests drive; r3d_18's 33 M weights take seconds a step on
a CPU). Importable by name, also in DDP's spawned processes (pyproject's pythonpath)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from ageatlas.age.train_config import TrainConfig

# layer4 of r3d_18 is 3 deep. At depth 2 (e.g. 16 x 16 x 32) this CPU's bf16 conv3d weight
# gradients are garbage (oneDNN in torch 2.14.1 on an AVX512-bf16 AMD EPYC; float32, and other
# depths, are right): a CPU library bug that the GPU's cuDNN does not share.
SHAPE = (24, 16, 16)


def volumes(folder: Path, n: int, seed: int, shape=SHAPE) -> list[tuple[str, float]]:
    """(path, age) items: float16 caches with a NaN border and a block that brightens with age."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        age = float(rng.uniform(46, 81))
        volume = rng.normal(0, 1, shape).astype(np.float32)
        volume[6:18, 4:12, 4:12] += 3 * (age - 46) / 35
        volume[:2], volume[-2:] = np.nan, np.nan
        path = folder / f"{2000000 + 100 * seed + i}.npy"  # named by eid, as the cache is
        np.save(path, volume.astype(np.float16))
        items.append((str(path), age))
    return items


class TinyRegressor(nn.Module):
    """Two strided convolutions with BatchNorm (DDP broadcasts its buffers) and the age model's
    two-layer head."""

    def __init__(self, hidden: int = 8):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(1, 8, 3, stride=2, padding=1),
            nn.BatchNorm3d(8),
            nn.ReLU(),
            nn.Conv3d(8, 16, 3, stride=2, padding=1),
            nn.BatchNorm3d(16),
            nn.ReLU(),
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Linear(16, hidden), nn.Linear(hidden, 1))

    @property
    def output_layer(self) -> nn.Linear:
        return self.head[-1]

    def forward(self, x):
        return self.head(self.features(x)).squeeze(1)


@dataclass
class TinyConfig(TrainConfig):
    """TrainConfig whose model is TinyRegressor: the 3D family's data, loss and layout."""

    def build_model(self, pretrained: bool = True) -> nn.Module:
        return TinyRegressor(self.hidden)
