"""Age predictions of a trained checkpoint (3D model or 2.5D baseline), with inference timing.

The timing covers the model's forward passes only (not reading the caches),
after an untimed warm-up pass per batch shape on CUDA (cuDNN autotunes each
new shape) and with the GPU synchronised around each batch, so that seconds
per sample compares with the paper's inference time per sample.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from ageatlas.age.train import load_checkpoint
from ageatlas.age.train_config import TrainConfig
from ageatlas.core.device import pick_device

log = logging.getLogger("ageatlas.age.predict")


def predict(
    checkpoint: str | Path,
    items: list[tuple[str, str]],
    *,
    batch_size: int = 4,
    device: str | None = None,
    num_workers: int = 0,
    config_type: type[TrainConfig] = TrainConfig,
    gpu_paths: bool | None = None,
) -> tuple[pd.DataFrame, dict]:
    """Predicted ages for (eid, input path) items, in their order, and the inference timing.

    `config_type` is the checkpoint's model family: TrainConfig for the 3D
    model on caches, ageatlas.baseline.model.BaselineConfig for the 2.5D baseline
    on projections. `gpu_paths` True takes the GPU's fast paths (bf16
    autocast, channels_last, pinned memory, warm-up) on the CPU too.
    """
    device = pick_device(device, task="predicting")
    model, config, _ = load_checkpoint(checkpoint, device, config_type)
    paths = config.fast_paths(device, gpu_paths)
    model.to(memory_format=paths.memory_format)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    dataset = config.dataset([(path, math.nan) for _, path in items])
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, pin_memory=paths.pin_memory
    )
    predicted, seconds, warmed = [], 0.0, set()
    with torch.inference_mode(), paths.autocast():
        for x, _ in loader:
            x = x.to(device, non_blocking=True, memory_format=paths.memory_format)
            if paths.warm_up and x.shape not in warmed:
                model(x)
                warmed.add(x.shape)
            _synchronize(device)
            started = time.perf_counter()
            ages = model(x).float()
            _synchronize(device)
            seconds += time.perf_counter() - started
            predicted.append(ages.cpu().numpy())
    n = len(items)
    ages = np.concatenate(predicted).astype(np.float64) if predicted else np.empty(0)
    table = pd.DataFrame({"eid": [eid for eid, _ in items], "predicted": ages})
    timing = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": paths.describe(),
        "n": n,
        "seconds": seconds,
        "seconds_per_sample": seconds / n if n else math.nan,
    }
    log.info(
        "predicted %d participants on %s: %.2f s of inference, %.4f s per sample",
        n,
        timing["device"],
        seconds,
        timing["seconds_per_sample"],
    )
    return table, timing


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
