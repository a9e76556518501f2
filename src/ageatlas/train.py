"""Training of the age model: L1 on years, Adam, accumulation, plateau LR, resumable, DDP.

The same loop trains the 2.5D baseline: the config's class says which model,
which input files, which augmentation and which loss (`TrainConfig` the 3D
model, `ageatlas.baseline.BaselineConfig` the projections' VGG16).

The authors' recipe (method-notes.md): L1 loss, Adam lr 1e-4, batch 1 with
32 accumulated steps, ReduceLROnPlateau(0.1, patience 3) on validation MAE,
100 epochs, seed 42. Two additions: the output bias starts at the training
mean age (``init_output_bias``, so short runs start at the mean predictor
instead of at 0 years), and optional early stopping.

Every epoch ends with ``out_dir/state.pt`` (model, optimiser, scheduler,
progress, RNG states, metrics, best weights so far), written atomically, so
a killed job restarts at the next epoch and, on the CPU, ends with exactly
the weights an uninterrupted run would have. The data order of epoch e is a
function of (seed, e) alone (DistributedSampler.set_epoch), which is what
makes resuming exact. A state written for another config or other data
(file names, ages, sizes, mtimes) is moved to ``state.stale.pt`` and
training starts afresh. When done, ``checkpoint.pt`` holds the weights of
the epoch with the best validation MAE; ``metrics.tsv`` has a row per epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import socket
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import BinaryIO, Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ageatlas.model import build_model, load_trained

log = logging.getLogger("ageatlas.train")

STATE = "state.pt"
STALE_STATE = "state.stale.pt"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.tsv"
METRIC_COLUMNS = ("epoch", "train_mae", "val_mae", "lr", "seconds", "samples_per_s")
# Settings that do not change the numbers of the epochs already run: a run
# may resume under other values (e.g. more epochs).
RESUMABLE_SETTINGS = ("epochs", "early_stopping", "num_workers")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass
class TrainConfig:
    epochs: int = 100
    lr: float = 1e-4
    batch_size: int = 1  # per process
    accumulate: int = 32  # effective batch = batch_size * accumulate samples, whatever the world size
    plateau_factor: float = 0.1
    plateau_patience: int = 3  # ReduceLROnPlateau on validation MAE
    early_stopping: int | None = None  # patience in epochs, None = off
    seed: int = 42
    num_workers: int = 0
    bf16: bool = True  # CUDA only
    channels_last: bool = True  # CUDA only
    pretrained: str | None = None
    hidden: int = 256
    init_output_bias: bool = True  # start at the training mean age (the authors start at 0)

    # What a model family defines; the 2.5D baseline (ageatlas.baseline.BaselineConfig)
    # overrides these, the training loop, resume, DDP and prediction are shared.

    @classmethod
    def from_dict(cls, settings: dict) -> "TrainConfig":
        """The config of a checkpoint's or state's `config` record; keys it lacks take their defaults."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in settings.items() if k in names})

    def build_model(self, pretrained: bool = True) -> nn.Module:
        """The untrained model; `pretrained` False skips the local weights (a checkpoint follows)."""
        return build_model(self.pretrained if pretrained else None, self.hidden)

    def dataset(self, items: Sequence[tuple[str, float]]) -> Dataset:
        return CacheDataset(items)

    def memory_format(self, device: torch.device) -> torch.memory_format:
        cuda = device.type == "cuda"
        return torch.channels_last_3d if cuda and self.channels_last else torch.contiguous_format

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A training batch on the device, augmented (none for the 3D model)."""
        return x

    def sample_loss(self, error: torch.Tensor) -> torch.Tensor:
        """Per-sample loss of predicted - true age: L1 (the authors)."""
        return error.abs()


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
        volume = torch.from_numpy(np.load(path, mmap_mode="r").astype(np.float32, order="C"))
        return volume[None] if self.add_channel else volume, torch.tensor(age, dtype=torch.float32)


class _Shard(Sampler):
    """Every world-th index from rank, no padding: validation counts each sample once."""

    def __init__(self, n: int, rank: int, world: int):
        self.indices = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


@dataclass
class _Progress:
    epoch: int = 0  # last finished epoch
    best_val_mae: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the best one (early stopping)
    metrics: list[dict] = field(default_factory=list)
    best_model: dict | None = None


@dataclass
class _Job:
    """What one training process works with."""

    rank: int
    world: int
    device: torch.device
    config: TrainConfig
    out_dir: Path
    model: nn.Module
    wrapped: torch.nn.Module  # model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    generator: torch.Generator
    bf16: bool
    memory_format: torch.memory_format
    accumulate: int  # steps per process


def pick_device(device: str | torch.device | None, task: str = "training") -> torch.device:
    """The given device, else CUDA when there is a GPU, else the CPU (logged)."""
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # all CUDA devices too


def _seed_worker(worker_id: int) -> None:
    # torch seeds each worker from the loader's generator; numpy and random follow it.
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def train(
    train_items: list[tuple[str, float]],
    val_items: list[tuple[str, float]],
    out_dir: str | Path,
    config: TrainConfig,
    *,
    device: str | None = None,
    world_size: int | None = None,
) -> dict:
    """Train (or resume training) the age model; writes state.pt, metrics.tsv and checkpoint.pt in out_dir.

    The config's class says which model: TrainConfig the 3D model on cached
    volumes, ageatlas.baseline.BaselineConfig the 2.5D baseline on projections.

    world_size > 1 trains with DistributedDataParallel over that many
    processes (one GPU each on CUDA, gloo processes on the CPU). Returns a
    summary: device, world size, epochs run, best epoch and its validation
    MAE, whether training stopped early, the epoch it resumed after.
    """
    if not train_items or not val_items:
        raise ValueError(
            f"training needs participants: {len(train_items)} train, {len(val_items)} validation"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    world = world_size or 1
    device = pick_device(device)
    if device.type == "cuda" and world > torch.cuda.device_count():
        raise RuntimeError(f"world_size {world} but only {torch.cuda.device_count()} GPUs are visible")
    keys = {"config_key": config_key(config), "data_key": data_key(train_items, val_items)}
    resume = _check_state(out_dir, keys)
    args = (train_items, val_items, out_dir, config, device, resume, keys)
    if world == 1:
        return _run(0, 1, *args)
    return _spawn(world, args)


def config_key(config: TrainConfig) -> str:
    settings = {k: v for k, v in asdict(config).items() if k not in RESUMABLE_SETTINGS}
    return _digest(settings)


def data_key(train_items: Sequence[tuple[str, float]], val_items: Sequence[tuple[str, float]]) -> str:
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


def _check_state(out_dir: Path, keys: dict) -> bool:
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


def _spawn(world: int, args: tuple) -> dict:
    port = _free_port()
    queue = mp.get_context("spawn").SimpleQueue()
    with _main_not_reimported():
        context = mp.start_processes(
            _worker,
            args=(world, port, queue, _log_files(), args),
            nprocs=world,
            join=False,
            start_method="spawn",
        )
    while not context.join():
        pass
    return queue.get()


def _worker(rank: int, world: int, port: int, queue, log_files: tuple[int, list[str]], args: tuple) -> None:
    _log_to(rank, *log_files)
    device = args[4]
    if device.type == "cuda":
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        backend = "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        summary = _run(rank, world, *args[:4], device, *args[5:])
        if rank == 0:
            queue.put(summary)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _main_not_reimported():
    """Spawned processes re-run the parent's __main__ file unless it guards its code with
    `if __name__ == "__main__"`; Snakemake's script files do not. The workers need nothing from it."""
    main = sys.modules["__main__"]
    path = main.__dict__.pop("__file__", None)
    try:
        yield
    finally:
        if path is not None:
            main.__file__ = path


def _log_files() -> tuple[int, list[str]]:
    root = logging.getLogger()
    return root.level, [h.baseFilename for h in root.handlers if isinstance(h, logging.FileHandler)]


def _log_to(rank: int, level: int, files: list[str]) -> None:
    """Spawned processes start with bare logging: rank 0 appends to the parent's log files."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if rank == 0:
        handlers += [logging.FileHandler(f, mode="a") for f in files]
    logging.basicConfig(
        level=level if rank == 0 else logging.WARNING, handlers=handlers, force=True, format=LOG_FORMAT
    )


def _run(
    rank: int,
    world: int,
    train_items: list,
    val_items: list,
    out_dir: Path,
    config: TrainConfig,
    device: torch.device,
    resume: bool,
    keys: dict,
) -> dict:
    """One training process from start (or the saved state) to the end."""
    job, progress = _setup(rank, world, train_items, device, out_dir, config, resume)
    start = progress.epoch
    train_loader, sampler = _train_loader(job, train_items)
    val_loader = _loader(job, config.dataset(val_items), _Shard(len(val_items), rank, world), config.batch_size)
    while not _finished(progress, config):
        epoch = progress.epoch + 1
        sampler.set_epoch(epoch)
        row = _epoch(job, train_loader, val_loader, epoch)
        _record(job, progress, row)
        if rank == 0:
            _save_state(job, progress, keys)
            _write_metrics(out_dir / METRICS, progress.metrics)
            log.info(
                "epoch %d/%d: train MAE %.3f, val MAE %.3f, lr %.2e, %.1f s, %.2f samples/s",
                epoch, config.epochs, row["train_mae"], row["val_mae"], row["lr"], row["seconds"],
                row["samples_per_s"],
            )
    stopped = progress.epoch < config.epochs
    if stopped and progress.epoch > start:
        log.info("early stopping: no better validation MAE for %d epochs", progress.bad_epochs)
    if rank == 0:
        _write_metrics(out_dir / METRICS, progress.metrics)
        _write_checkpoint(job, progress, np.load(train_items[0][0], mmap_mode="r").shape)
    return {
        "device": str(device),
        "world_size": world,
        "epochs_run": progress.epoch,
        "resumed_after": start,
        "best_epoch": progress.best_epoch,
        "best_val_mae": progress.best_val_mae,
        "stopped_early": stopped,
        "checkpoint": str(out_dir / CHECKPOINT),
        "metrics": str(out_dir / METRICS),
    }


def _setup(
    rank: int,
    world: int,
    train_items: list,
    device: torch.device,
    out_dir: Path,
    config: TrainConfig,
    resume: bool,
) -> tuple[_Job, _Progress]:
    seed_everything(config.seed)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # one input size: autotune once
    model = config.build_model()
    if config.init_output_bias:
        with torch.no_grad():
            model.output_layer.bias.fill_(float(np.mean([age for _, age in train_items])))
    memory_format = config.memory_format(device)
    model.to(device, memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=cuda)  # fused: one kernel on the GPU
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=config.plateau_factor, patience=config.plateau_patience
    )
    generator = torch.Generator().manual_seed(config.seed)
    bf16 = cuda and config.bf16 and torch.cuda.is_bf16_supported()
    if cuda and config.bf16 and not bf16:
        log.warning("this GPU has no bfloat16: training in float32")
    job = _Job(
        rank=rank, world=world, device=device, config=config, out_dir=out_dir, model=model, wrapped=model,
        optimizer=optimizer, scheduler=scheduler, generator=generator, bf16=bf16,
        memory_format=memory_format, accumulate=max(1, round(config.accumulate / world)),
    )
    progress = _load_state(job) if resume else _Progress()
    if world > 1:
        job.wrapped = DistributedDataParallel(model, device_ids=[device] if cuda else None)
    if rank == 0:
        _log_start(job, len(train_items), progress)
    return job, progress


def _log_start(job: _Job, n_train: int, progress: _Progress) -> None:
    name = torch.cuda.get_device_name(job.device) if job.device.type == "cuda" else "CPU"
    precision = "bf16 autocast" if job.bf16 else "float32"
    if job.accumulate * job.world != job.config.accumulate:
        log.warning(
            "accumulate %d is not a multiple of %d processes: %d steps per process",
            job.config.accumulate,
            job.world,
            job.accumulate,
        )
    log.info(
        "training on %s (%s), %d process(es), %d training samples, effective batch %d",
        name,
        precision,
        job.world,
        n_train,
        job.config.batch_size * job.accumulate * job.world,
    )
    if progress.epoch:
        log.info(
            "resuming from %s after epoch %d of %d", job.out_dir / STATE, progress.epoch, job.config.epochs
        )


def _train_loader(job: _Job, items) -> tuple[DataLoader, DistributedSampler]:
    # The order of epoch e depends on (seed, e) only: a resumed run sees the same order.
    sampler = DistributedSampler(
        job.config.dataset(items), num_replicas=job.world, rank=job.rank, shuffle=True, seed=job.config.seed
    )
    return _loader(job, sampler.dataset, sampler, job.config.batch_size), sampler


def _loader(job: _Job, dataset: Dataset, sampler: Sampler, batch_size: int) -> DataLoader:
    workers = job.config.num_workers
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=job.device.type == "cuda",
        persistent_workers=workers > 0,
        worker_init_fn=_seed_worker,
        generator=job.generator,
    )


def _finished(progress: _Progress, config: TrainConfig) -> bool:
    if progress.epoch >= config.epochs:
        return True
    return config.early_stopping is not None and progress.bad_epochs >= config.early_stopping


def _epoch(job: _Job, train_loader: DataLoader, val_loader: DataLoader, epoch: int) -> dict:
    lr = job.optimizer.param_groups[0]["lr"]
    started = time.perf_counter()
    train_sums = _train_one_epoch(job, train_loader)
    _synchronize(job.device)
    train_seconds = time.perf_counter() - started
    totals = _all_reduce(job, torch.cat([train_sums, _validate(job, val_loader)])).tolist()
    seconds = time.perf_counter() - started
    return {
        "epoch": epoch,
        "train_mae": totals[0] / totals[1],
        "val_mae": totals[2] / totals[3],
        "lr": lr,
        "seconds": seconds,
        "samples_per_s": totals[1] / train_seconds,
    }


def _train_one_epoch(job: _Job, loader: DataLoader) -> torch.Tensor:
    """One pass with gradient accumulation; returns (sum of |error|, samples) on this process."""
    job.wrapped.train()
    accumulate = job.accumulate
    n, per_step, batches = len(loader.sampler), accumulate * job.config.batch_size, len(loader)
    abs_error = torch.zeros((), dtype=torch.float64, device=job.device)
    job.optimizer.zero_grad(set_to_none=True)
    for i, (x, age) in enumerate(loader):
        x = job.config.augment(x.to(job.device, non_blocking=True), job.generator)
        x = x.contiguous(memory_format=job.memory_format)
        age = age.to(job.device, non_blocking=True)
        first = (i // accumulate) * per_step
        step_samples = min(first + per_step, n) - first  # the last step of an epoch may be short
        stepping = (i + 1) % accumulate == 0 or i + 1 == batches
        # DDP all-reduces gradients on the step's last backward only.
        with nullcontext() if stepping or job.world == 1 else job.wrapped.no_sync():
            with _autocast(job):
                error = job.wrapped(x).float() - age
            (job.config.sample_loss(error).sum() / step_samples).backward()
        abs_error += error.detach().abs().sum()
        if stepping:
            job.optimizer.step()
            job.optimizer.zero_grad(set_to_none=True)
    return torch.stack([abs_error, torch.tensor(float(n), dtype=torch.float64, device=job.device)])


def _validate(job: _Job, loader: DataLoader) -> torch.Tensor:
    """(sum of |error|, samples) on this process's shard.

    Runs the bare model: DDP's forward broadcasts buffers, a collective that
    would hang when the shards differ in length.
    """
    job.model.eval()
    abs_error = torch.zeros((), dtype=torch.float64, device=job.device)
    with torch.inference_mode(), _autocast(job):
        for x, age in loader:
            x = x.to(job.device, non_blocking=True, memory_format=job.memory_format)
            abs_error += (job.model(x).float() - age.to(job.device, non_blocking=True)).abs().sum()
    return torch.stack(
        [abs_error, torch.tensor(float(len(loader.sampler)), dtype=torch.float64, device=job.device)]
    )


def _autocast(job: _Job):
    return torch.autocast("cuda", dtype=torch.bfloat16) if job.bf16 else nullcontext()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _all_reduce(job: _Job, values: torch.Tensor) -> torch.Tensor:
    if job.world > 1:
        dist.all_reduce(values)
    return values


def _record(job: _Job, progress: _Progress, row: dict) -> None:
    """Scheduler, best epoch and early-stopping counter after an epoch; identical on every rank."""
    job.scheduler.step(row["val_mae"])
    progress.epoch = row["epoch"]
    progress.metrics.append(row)
    if row["val_mae"] < progress.best_val_mae:
        progress.best_val_mae, progress.best_epoch, progress.bad_epochs = row["val_mae"], row["epoch"], 0
        progress.best_model = {k: v.detach().to("cpu", copy=True) for k, v in job.model.state_dict().items()}
    else:
        progress.bad_epochs += 1


def _save_state(job: _Job, progress: _Progress, keys: dict) -> None:
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
        "optimizer": job.optimizer.state_dict(),
        "scheduler": job.scheduler.state_dict(),
        "rng": _rng_state(job.generator, job.device),
    }
    atomic_write(job.out_dir / STATE, lambda f: torch.save(state, f))


def _load_state(job: _Job) -> _Progress:
    state = torch.load(job.out_dir / STATE, map_location="cpu", weights_only=True)
    job.model.load_state_dict(state["model"])
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
    return _Progress(**{name: state[name] for name in fields})


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


def _write_metrics(path: Path, rows: list[dict]) -> None:
    table = pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
    atomic_write(path, lambda f: f.write(table.to_csv(sep="\t", index=False).encode()))


def _write_checkpoint(job: _Job, progress: _Progress, input_shape: tuple[int, ...]) -> None:
    if progress.best_model is None:
        raise RuntimeError(f"no epoch of {progress.epoch} gave a finite validation MAE: training diverged")
    checkpoint = {
        "model": progress.best_model,
        "epoch": progress.best_epoch,
        "val_mae": progress.best_val_mae,
        "config": asdict(job.config),
        "input_shape": list(input_shape),
    }
    atomic_write(job.out_dir / CHECKPOINT, lambda f: torch.save(checkpoint, f))
    log.info(
        "best epoch %d (validation MAE %.3f) written to %s",
        progress.best_epoch,
        progress.best_val_mae,
        job.out_dir / CHECKPOINT,
    )


def load_checkpoint(
    checkpoint: str | Path, device: str | torch.device = "cpu", config_type: type[TrainConfig] = TrainConfig
) -> tuple[nn.Module, TrainConfig, dict]:
    """A checkpoint.pt's model (eval mode, on `device`), its config as `config_type`, and its metadata."""
    model, meta = load_trained(
        checkpoint, device, build=lambda settings: config_type.from_dict(settings).build_model(pretrained=False)
    )
    return model, config_type.from_dict(meta["config"]), meta


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write beside path, flush to disk, then rename: readers see the old file or the new, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
