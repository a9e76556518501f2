"""Input-level attributions of the predicted age against an explicit reference volume (captum).

- ``integrated_gradients`` (Sundararajan et al. 2017): gradients integrated
  along the straight path from the reference to the participant's volume.
  The voxel attributions sum to f(volume) - f(reference) (completeness), so a
  map reads "years of predicted age this voxel adds relative to the
  reference".
- ``occlusion`` (Zeiler & Fergus 2014): each block of the volume replaced by
  the reference's block in turn; every voxel of a block gets the drop in
  predicted age (captum's convention; trailing voxels that fill no whole
  block get 0). Slow (one forward pass per block) but model-agnostic: the
  independent check the layer methods are compared with
  (benchmarks/attribution.py).

The reference is the mean training volume (``mean_volume``): the workflow
writes it once per model (rule ``reference_volume``), on the cache grid.
Both maps are signed, at the input's own resolution.
"""

from __future__ import annotations

import numpy as np
import torch
from captum.attr import IntegratedGradients, Occlusion
from torch import nn

INPUT_METHODS = ("integrated_gradients", "occlusion")


def attribute_against_reference(
    model: nn.Module,
    volume: torch.Tensor,
    reference: torch.Tensor,
    method: str,
    *,
    steps: int = 32,
    block: int = 4,
    batch: int = 4,
) -> tuple[torch.Tensor, float, float]:
    """(map at the input's spatial shape, predicted age, f(volume) - f(reference)) for one volume.

    ``volume`` and ``reference`` are (1, C, ...) on the model's device. The
    model runs in eval mode (its previous mode is restored). ``steps``: the
    integral's Riemann steps; ``block``: occlusion's cube edge in voxels;
    ``batch``: volumes per forward pass (memory).
    """
    if method not in INPUT_METHODS:
        raise ValueError(f"reference attribution method must be one of {INPUT_METHODS}")
    if volume.shape != reference.shape or volume.shape[0] != 1:
        raise ValueError(
            f"volume {tuple(volume.shape)} and reference {tuple(reference.shape)} must both be "
            "one (1, C, ...) volume of the same shape"
        )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ages = model(torch.cat([volume, reference]))
        if method == "integrated_gradients":
            attribution = IntegratedGradients(model).attribute(
                volume, baselines=reference, n_steps=steps, internal_batch_size=batch
            )
        else:
            window = (volume.shape[1],) + (block,) * (volume.ndim - 2)
            attribution = Occlusion(model).attribute(
                volume,
                sliding_window_shapes=window,
                strides=window,
                baselines=reference,
                perturbations_per_eval=batch,
            )
    finally:
        model.train(was_training)
    predicted, at_reference = (float(a) for a in ages.detach().reshape(-1))
    return attribution.detach().sum(dim=1)[0].float().cpu(), predicted, predicted - at_reference


def reference_volume(cache_paths) -> np.ndarray:
    """The mean training input from cached volumes: their NaN background counts as 0, the mean of
    the N(0, 1) noise drawn there at every read (ageatlas.age.preprocess.model_input)."""
    from ageatlas.core.files import load_npy

    return mean_volume(np.nan_to_num(load_npy(p), nan=0.0) for p in cache_paths)


def mean_volume(volumes) -> np.ndarray:
    """Voxel-wise mean of equally shaped volumes (streamed; float32), e.g. the training inputs."""
    total, n, shape = None, 0, None
    for volume in volumes:
        volume = np.asarray(volume, dtype=np.float64)
        if shape is None:
            shape, total = volume.shape, np.zeros(volume.shape)
        elif volume.shape != shape:
            raise ValueError(f"volume {n + 1} has shape {volume.shape}, the first {shape}")
        total += volume
        n += 1
    if n == 0:
        raise ValueError("the reference volume needs at least one volume")
    return (total / n).astype(np.float32)
