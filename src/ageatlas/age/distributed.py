"""Training with DistributedDataParallel: one spawned process per GPU (gloo processes on the CPU),
their logging, and the sums they share."""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ageatlas.age.train_state import Job

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def spawn(world: int, run: Callable[..., dict], args: tuple) -> dict:
    """`run(rank, world, *args)` in `world` processes, the device of args[4] made each rank's;
    returns rank 0's result. `run` is passed in, not imported: the loop imports this module."""
    port = _free_port()
    queue = mp.get_context("spawn").SimpleQueue()
    with _main_not_reimported():
        context = mp.start_processes(
            _worker,
            args=(world, port, queue, _log_files(), run, args),
            nprocs=world,
            join=False,
            start_method="spawn",
        )
    while not context.join():
        pass
    return queue.get()


def _worker(
    rank: int,
    world: int,
    port: int,
    queue,
    log_files: tuple[int, list[str]],
    run: Callable[..., dict],
    args: tuple,
) -> None:
    _log_to(rank, *log_files)
    device, backend = process_device(args[4], rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        summary = run(rank, world, *args[:4], device, *args[5:])
        if rank == 0:
            queue.put(summary)
    finally:
        dist.destroy_process_group()


def process_device(device: torch.device, rank: int) -> tuple[torch.device, str]:
    """A rank's device and the process group's backend: GPU `rank` over NCCL on CUDA, the CPU
    over gloo otherwise. Apart from the worker, so CPU tests check the CUDA choice too."""
    if device.type == "cuda":
        return torch.device("cuda", rank), "nccl"
    return device, "gloo"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _main_not_reimported():
    """Spawned processes re-run the parent's __main__ file unless it guards its code with
    `if __name__ == "__main__"`; Snakemake's script files do not. The workers need nothing
    from it."""
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
        level=level if rank == 0 else logging.WARNING,
        handlers=handlers,
        force=True,
        format=LOG_FORMAT,
    )


def all_reduce(job: Job, values: torch.Tensor) -> torch.Tensor:
    if job.world > 1:
        dist.all_reduce(values)
    return values
