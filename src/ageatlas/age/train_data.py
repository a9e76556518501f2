"""What a training process reads: the cached inputs as a Dataset, the validation shard, and the
seeding of the loaders' worker processes."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ageatlas.core.files import load_npy


class CacheDataset(Dataset):
    """(path, age) items -> ((1, X, Y, Z) float32 volume, age); one memory-mapped read per sample.

    With `add_channel` False the file already has its channel axis first
    (the 2.5D projections, (2, H, W)).
    """

    def __init__(self, items: Sequence[tuple[str, float]], add_channel: bool = True):
        self.items = list(items)
        self.add_channel = add_channel

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        path, age = self.items[index]
        volume = torch.from_numpy(load_npy(path).astype(np.float32, order="C"))
        return volume[None] if self.add_channel else volume, torch.tensor(age, dtype=torch.float32)


class Shard(Sampler):
    """Every world-th index from rank, no padding: validation counts each sample once."""

    def __init__(self, n: int, rank: int, world: int):
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; numpy and random follow it.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
