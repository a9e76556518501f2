"""What a training process reads: the cached inputs as a Dataset, the training sampler that tells
it the epoch, the validation shard, and the seeding of the loaders' worker processes."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ageatlas.age.preprocess import model_input
from ageatlas.core.files import load_npy


class CacheDataset(Dataset):
    """(path, age) items -> ((1, X, Y, Z) float32 volume, age); one memory-mapped read per sample.

    With a `seed` the cache's NaN background is filled with N(0, 1) noise as
    it is read (`ageatlas.age.preprocess.model_input`): an index `i` is an
    evaluation read (noise fixed per participant), an index `(epoch, i)`,
    as `EpochSampler` gives it, a training read with that epoch's noise.
    Without a seed the file is read as it is stored. With `add_channel`
    False the file already has its channel axis first (the 2.5D projections,
    (2, H, W), which have no background to fill).
    """

    def __init__(
        self,
        items: Sequence[tuple[str, float]],
        add_channel: bool = True,
        seed: int | None = None,
    ):
        self.items = list(items)
        self.add_channel = add_channel
        self.seed = seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = index if isinstance(index, tuple) else (None, index)
        path, age = self.items[index]
        if self.seed is None:
            volume = load_npy(path).astype(np.float32, order="C")
        else:
            volume = model_input(load_npy(path), path, self.seed, epoch)
        volume = torch.from_numpy(volume)
        return volume[None] if self.add_channel else volume, torch.tensor(age, dtype=torch.float32)


class EpochSampler(Sampler):
    """A training sampler's indices as (epoch, index): the dataset draws that epoch's noise.

    The epoch travels with each index, so loader workers (persistent ones
    too, whose copy of the dataset never sees `set_epoch`) read what the
    main process would.
    """

    def __init__(self, sampler: Sampler):
        self.sampler = sampler
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        epoch = self.epoch
        return ((epoch, index) for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


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
