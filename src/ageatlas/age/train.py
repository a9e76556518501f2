"""Training of the age model: L1 on years, Adam, accumulation, plateau or cosine LR, resumable, DDP.

The same loop trains the 2.5D baseline: the config's class says which model,
which input files, which augmentation and which loss (`ageatlas.age.train_config`).
The loop's parts live beside it: the config and its digests in `train_config`,
the inputs in `train_data`, the resumable state in `train_state`, the DDP
processes in `distributed`.

Every epoch ends with ``out_dir/state.pt``, so a killed job restarts at the
next epoch (`train_state`). The data order of epoch e is a function of
(seed, e) alone (DistributedSampler.set_epoch), and so is its background
noise (`ageatlas.age.preprocess.model_input`, drawn from (seed, eid, e) at
every training read), which is what makes resuming exact. When done,
``checkpoint.pt`` holds the weights of the epoch with the best validation
MAE (with ``ema_decay``, their moving average as it stood after that epoch);
``metrics.tsv`` has a row per epoch.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ageatlas.age.distributed import all_reduce, spawn
from ageatlas.age.model import load_trained
from ageatlas.age.train_config import TrainConfig, config_key, data_key
from ageatlas.age.train_data import EpochSampler, Shard, seed_worker
from ageatlas.age.train_state import STATE, Job, Progress, check_state, load_state, save_state
from ageatlas.core.device import pick_device
from ageatlas.core.files import atomic_write, load_npy

log = logging.getLogger("ageatlas.age.train")

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.tsv"
METRIC_COLUMNS = ("epoch", "train_mae", "val_mae", "lr", "seconds", "samples_per_s")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # all CUDA devices too


def train(
    train_items: list[tuple[str, float]],
    val_items: list[tuple[str, float]],
    out_dir: str | Path,
    config: TrainConfig,
    *,
    device: str | None = None,
    world_size: int | None = None,
    gpu_paths: bool | None = None,
) -> dict:
    """Train (or resume) the age model; writes state.pt, metrics.tsv and checkpoint.pt in out_dir.

    The config's class says which model: TrainConfig the 3D model on cached
    volumes, ageatlas.baseline.model.BaselineConfig the 2.5D baseline on projections.

    world_size > 1 trains with DistributedDataParallel over that many
    processes (one GPU each on CUDA, gloo processes on the CPU). gpu_paths
    True takes the GPU's fast paths (ageatlas.core.fast_paths) on the CPU too;
    it is not part of the state's key, as the device is not. Returns a
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
        raise RuntimeError(
            f"world_size {world} but only {torch.cuda.device_count()} GPUs are visible"
        )
    keys = {"config_key": config_key(config), "data_key": data_key(train_items, val_items)}
    resume = check_state(out_dir, keys)
    args = (train_items, val_items, out_dir, config, device, resume, keys, gpu_paths)
    if world == 1:
        return _run(0, 1, *args)
    return spawn(world, _run, args)


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
    gpu_paths: bool | None = None,
) -> dict:
    """One training process from start (or the saved state) to the end."""
    job, progress = _setup(rank, world, train_items, device, out_dir, config, resume, gpu_paths)
    start = progress.epoch
    train_loader, sampler = _train_loader(job, train_items)
    val_loader = _loader(
        job, config.dataset(val_items), Shard(len(val_items), rank, world), config.batch_size
    )
    while not _finished(progress, config):
        epoch = progress.epoch + 1
        sampler.set_epoch(epoch)
        row = _epoch(job, train_loader, val_loader, epoch)
        _record(job, progress, row)
        if rank == 0:
            save_state(job, progress, keys)
            _write_metrics(out_dir / METRICS, progress.metrics)
            log.info(
                "epoch %d/%d: train MAE %.3f, val MAE %.3f, lr %.2e, %.1f s, %.2f samples/s",
                epoch,
                config.epochs,
                row["train_mae"],
                row["val_mae"],
                row["lr"],
                row["seconds"],
                row["samples_per_s"],
            )
    stopped = progress.epoch < config.epochs
    if stopped and progress.epoch > start:
        log.info("early stopping: no better validation MAE for %d epochs", progress.bad_epochs)
    if rank == 0:
        _write_metrics(out_dir / METRICS, progress.metrics)
        _write_checkpoint(job, progress, load_npy(train_items[0][0]).shape)
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
    gpu_paths: bool | None = None,
) -> tuple[Job, Progress]:
    seed_everything(config.seed)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True  # one input size: autotune once
    model = config.build_model()
    if config.init_output_bias:
        with torch.no_grad():
            model.output_layer.bias.fill_(float(np.mean([age for _, age in train_items])))
    paths = config.fast_paths(device, gpu_paths)
    model.to(device, memory_format=paths.memory_format)
    # fused: one kernel for all parameters (the GPU's path; torch has a CPU kernel too)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=paths.fused_adam)
    scheduler = lr_scheduler(optimizer, config)
    generator = torch.Generator().manual_seed(config.seed)
    if cuda and config.bf16 and not paths.bf16:
        log.warning("this GPU has no bfloat16: training in float32")
    job = Job(
        rank=rank,
        world=world,
        device=device,
        config=config,
        out_dir=out_dir,
        model=model,
        wrapped=model,
        optimizer=optimizer,
        scheduler=scheduler,
        generator=generator,
        paths=paths,
        accumulate=max(1, round(config.accumulate / world)),
        average=_moving_average(model, config.ema_decay),
    )
    progress = load_state(job) if resume else Progress()
    if world > 1:
        job.wrapped = DistributedDataParallel(model, device_ids=[device] if cuda else None)
    if rank == 0:
        _log_start(job, len(train_items), progress)
    return job, progress


def _moving_average(model: nn.Module, decay: float) -> AveragedModel | None:
    """The exponential moving average of ``model``'s weights (and BatchNorm statistics), or
    None for ``decay`` 0; its first update copies the weights."""
    if not decay:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _log_start(job: Job, n_train: int, progress: Progress) -> None:
    name = torch.cuda.get_device_name(job.device) if job.device.type == "cuda" else "CPU"
    precision = job.paths.describe()
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
            "resuming from %s after epoch %d of %d",
            job.out_dir / STATE,
            progress.epoch,
            job.config.epochs,
        )


def _train_loader(job: Job, items) -> tuple[DataLoader, EpochSampler]:
    # The order of epoch e depends on (seed, e) only, and so does its background noise (the
    # sampler hands the epoch to the dataset): a resumed run sees the same order and inputs.
    dataset = job.config.dataset(items)
    sampler = EpochSampler(
        DistributedSampler(
            dataset,
            num_replicas=job.world,
            rank=job.rank,
            shuffle=True,
            seed=job.config.seed,
        )
    )
    return _loader(job, dataset, sampler, job.config.batch_size), sampler


def _loader(job: Job, dataset: Dataset, sampler: Sampler, batch_size: int) -> DataLoader:
    workers = job.config.num_workers
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=job.paths.pin_memory,
        persistent_workers=workers > 0,
        worker_init_fn=seed_worker,
        generator=job.generator,
    )


def _finished(progress: Progress, config: TrainConfig) -> bool:
    if progress.epoch >= config.epochs:
        return True
    return config.early_stopping is not None and progress.bad_epochs >= config.early_stopping


def _epoch(job: Job, train_loader: DataLoader, val_loader: DataLoader, epoch: int) -> dict:
    lr = job.optimizer.param_groups[0]["lr"]
    started = time.perf_counter()
    train_sums = _train_one_epoch(job, train_loader)
    _synchronize(job.device)
    train_seconds = time.perf_counter() - started
    if job.config.precise_bn:
        _precise_bn(job, train_loader)
    totals = all_reduce(job, torch.cat([train_sums, _validate(job, val_loader)])).tolist()
    seconds = time.perf_counter() - started
    return {
        "epoch": epoch,
        "train_mae": totals[0] / totals[1],
        "val_mae": totals[2] / totals[3],
        "lr": lr,
        "seconds": seconds,
        "samples_per_s": totals[1] / train_seconds,
    }


def _train_one_epoch(job: Job, loader: DataLoader) -> torch.Tensor:
    """One pass with gradient accumulation; returns (sum of |error|, samples) on this process."""
    job.wrapped.train()
    accumulate = job.accumulate
    n, per_step, batches = len(loader.sampler), accumulate * job.config.batch_size, len(loader)
    abs_error = torch.zeros((), dtype=torch.float64, device=job.device)
    job.optimizer.zero_grad(set_to_none=True)
    for i, (x, age) in enumerate(loader):
        x = job.config.augment(x.to(job.device, non_blocking=True), job.generator)
        x = x.contiguous(memory_format=job.paths.memory_format)
        age = age.to(job.device, non_blocking=True)
        first = (i // accumulate) * per_step
        step_samples = min(first + per_step, n) - first  # the last step of an epoch may be short
        stepping = (i + 1) % accumulate == 0 or i + 1 == batches
        # DDP all-reduces gradients on the step's last backward only.
        with nullcontext() if stepping or job.world == 1 else job.wrapped.no_sync():
            with job.paths.autocast():
                error = job.wrapped(x).float() - age
            (job.config.sample_loss(error).sum() / step_samples).backward()
        abs_error += error.detach().abs().sum()
        if stepping:
            job.optimizer.step()
            job.optimizer.zero_grad(set_to_none=True)
            if job.average is not None:
                job.average.update_parameters(job.model)
    return torch.stack([abs_error, torch.tensor(float(n), dtype=torch.float64, device=job.device)])


def _precise_bn(job: Job, loader: DataLoader) -> None:
    """Set every BatchNorm's running mean and variance to their average over the training
    batches, un-augmented, under the weights validated (``Job.evaluated``: the epoch's
    last, or their moving average; :func:`batchnorm_statistics`). Several processes average
    their shards' statistics."""
    with job.paths.autocast():
        norms = batchnorm_statistics(
            job.evaluated,
            (
                x.to(job.device, non_blocking=True, memory_format=job.paths.memory_format)
                for x, _ in loader
            ),
        )
    if job.world > 1:
        for norm in norms:
            for stats in (norm.running_mean, norm.running_var):
                stats.copy_(all_reduce(job, stats.clone()) / job.world)


def batchnorm_statistics(model: nn.Module, batches: Iterable[torch.Tensor]) -> list[nn.Module]:
    """Set every BatchNorm's running statistics to their cumulative average over ``batches``
    under the current weights ("precise BN"); returns the BatchNorm layers, the model in eval
    mode.

    The running averages (momentum 0.1) mix statistics of weights several steps old: on a small
    cohort with small batches eval mode then sees other feature scales than training did (the
    demo's 2.5D model predicted ages 50 years off in eval mode while fitting in training mode).
    Only the BatchNorm layers run in training mode: dropout draws nothing.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    model.eval()
    if not norms:
        return norms
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches
        norm.train()
    with torch.no_grad():
        for x in batches:
            model(x)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
        norm.eval()
    return norms


def _validate(job: Job, loader: DataLoader) -> torch.Tensor:
    """(sum of |error|, samples) on this process's shard.

    Runs the bare model: DDP's forward broadcasts buffers, a collective that
    would hang when the shards differ in length.
    """
    model = job.evaluated
    model.eval()
    abs_error = torch.zeros((), dtype=torch.float64, device=job.device)
    with torch.inference_mode(), job.paths.autocast():
        for x, age in loader:
            x = x.to(job.device, non_blocking=True, memory_format=job.paths.memory_format)
            abs_error += (model(x).float() - age.to(job.device, non_blocking=True)).abs().sum()
    return torch.stack(
        [
            abs_error,
            torch.tensor(float(len(loader.sampler)), dtype=torch.float64, device=job.device),
        ]
    )


def lr_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig
) -> torch.optim.lr_scheduler.LRScheduler:
    """The config's learning-rate schedule, stepped once an epoch (:func:`_record`)."""
    if config.lr_schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=config.plateau_factor, patience=config.plateau_patience
        )
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, config.epochs))
    raise ValueError(f"train.lr_schedule: unknown {config.lr_schedule!r} (plateau or cosine)")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _record(job: Job, progress: Progress, row: dict) -> None:
    """Scheduler, best epoch and early-stopping counter after an epoch; identical on every rank."""
    if isinstance(job.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        job.scheduler.step(row["val_mae"])
    else:
        job.scheduler.step()
    progress.epoch = row["epoch"]
    progress.metrics.append(row)
    if row["val_mae"] < progress.best_val_mae:
        progress.best_val_mae, progress.best_epoch = row["val_mae"], row["epoch"]
        progress.bad_epochs = 0
        progress.best_model = {
            k: v.detach().to("cpu", copy=True) for k, v in job.evaluated.state_dict().items()
        }
    else:
        progress.bad_epochs += 1


def _write_metrics(path: Path, rows: list[dict]) -> None:
    table = pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
    atomic_write(path, lambda f: f.write(table.to_csv(sep="\t", index=False).encode()))


def _write_checkpoint(job: Job, progress: Progress, input_shape: tuple[int, ...]) -> None:
    if progress.best_model is None:
        raise RuntimeError(
            f"no epoch of {progress.epoch} gave a finite validation MAE: training diverged"
        )
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
    checkpoint: str | Path,
    device: str | torch.device = "cpu",
    config_type: type[TrainConfig] = TrainConfig,
) -> tuple[nn.Module, TrainConfig, dict]:
    """A checkpoint.pt's model (eval mode, on `device`), its config as `config_type`, and its
    metadata."""
    model, meta = load_trained(
        checkpoint,
        device,
        build=lambda settings: config_type.from_dict(settings).build_model(pretrained=False),
    )
    return model, config_type.from_dict(meta["config"]), meta
