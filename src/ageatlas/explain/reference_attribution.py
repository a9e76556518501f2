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

Integrated gradients may be averaged over shifts of the input (``shifts``):
the network's strided convolutions make its gradients depend on where a
structure falls on their stride grid, so one map carries a pattern of that
grid (voxels of both signs side by side) on top of the evidence. The map of
the volume and reference shifted together by each offset in {0, ..., shifts
- 1} voxels per axis, shifted back, and averaged keeps what does not depend
on the grid (:func:`shift_averaged`). Shifts are circular: what leaves one
face enters at the other, at the demo's sizes background or one slice of
neck or knee.

The reference (``gradcam.reference``) is the mean training volume by default
(``mean_volume``; the workflow writes it once per model, rule
``reference_volume``, on the cache grid), or, with ``group_atlas``, each
participant's group atlas brought into their own body through the inverse of
their registration (``atlas_reference``). The mean volume differs from any
one body wherever shapes and positions differ, so integrated gradients spread
importance over the whole body; against the participant's own anatomy, drawn
from the group's average tissue, what is left to attribute is what fills the
body differently. Both maps are signed, at the input's own resolution.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from captum.attr import IntegratedGradients, Occlusion
from torch import nn

from ageatlas.core.vocabulary import REFERENCE_METHODS

# Voxels per forward pass of integrated gradients: each step keeps its
# activations for the backward pass, and the gradcam rule's memory request is
# sized on one volume of the full UK Biobank grid a pass (13.9 GiB on the CPU,
# benchmarks/explain.py). Smaller inputs take several steps a pass: at the
# demo's input, 8 at once run 3.4 times faster than one at a time.
IG_VOXELS_PER_PASS = 224 * 174 * 370
OCCLUSION_VOLUMES_PER_PASS = 4  # forward passes only


def attribute_against_reference(
    model: nn.Module,
    volume: torch.Tensor,
    reference: torch.Tensor,
    method: str,
    *,
    steps: int = 32,
    block: int = 4,
    batch: int | None = None,
    shifts: int = 1,
) -> tuple[torch.Tensor, float, float]:
    """(map at the input's spatial shape, predicted age, f(volume) - f(reference)) for one volume.

    ``volume`` and ``reference`` are (1, C, ...) on the model's device. The
    model runs in eval mode (its previous mode is restored). ``steps``: the
    integral's Riemann steps; ``block``: occlusion's cube edge in voxels;
    ``batch``: volumes per forward pass (memory; default :func:`volumes_per_pass`);
    ``shifts``: integrated gradients averaged over shifts^3 offsets (:func:`shift_averaged`).
    """
    if method not in REFERENCE_METHODS:
        raise ValueError(f"reference attribution method must be one of {REFERENCE_METHODS}")
    check_shifts(method, shifts)
    batch = batch or volumes_per_pass(method, volume.shape[2:])
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
            integrated = IntegratedGradients(model)

            def attribute(shifted, shifted_reference):
                return integrated.attribute(
                    shifted, baselines=shifted_reference, n_steps=steps, internal_batch_size=batch
                )

            attribution = shift_averaged(attribute, volume, reference, shifts)
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


def check_shifts(method: str, shifts: int) -> None:
    """Raise unless ``shifts`` is 1, or above 1 for integrated gradients (the one method
    averaged over shifts)."""
    if shifts < 1 or (shifts > 1 and method != "integrated_gradients"):
        raise ValueError(
            f"shifts apply to integrated_gradients and are at least 1; got {shifts} for {method!r}"
        )


def shift_offsets(shifts: int, ndim: int = 3) -> list[tuple[int, ...]]:
    """Every offset in {0, ..., shifts - 1} voxels along each of ``ndim`` axes."""
    return list(itertools.product(range(shifts), repeat=ndim))


def shift_averaged(attribute, volume: torch.Tensor, reference: torch.Tensor, shifts: int):
    """The mean over :func:`shift_offsets` of ``attribute(volume, reference)`` with both
    rolled by the offset along their spatial axes and the map rolled back, so each of its
    voxels is the same input voxel's; ``shifts`` 1 is one unshifted call."""
    dims = tuple(range(2, volume.ndim))
    total = 0
    for offset in shift_offsets(shifts, len(dims)):
        rolled = attribute(torch.roll(volume, offset, dims), torch.roll(reference, offset, dims))
        total = total + torch.roll(rolled, tuple(-n for n in offset), dims)
    return total / shifts ** len(dims)


def volumes_per_pass(method: str, shape) -> int:
    """Volumes a forward pass of ``method`` takes for an input of ``shape`` voxels."""
    if method == "occlusion":
        return OCCLUSION_VOLUMES_PER_PASS
    return max(1, IG_VOXELS_PER_PASS // math.prod(int(n) for n in shape))


def reference_for(participant, volume: torch.Tensor, *, reference_path=None, atlas=None):
    """(reference (1, 1, ...) like ``volume``, where it came from) for one participant.

    ``participant`` is a ``gradcam.ParticipantInput``, ``volume`` its model
    input. ``atlas`` = (atlas path, registration path): the group atlas in the
    participant's body (:func:`atlas_reference`); a failed registration raises
    ``RegistrationFailed`` naming its file. Else ``reference_path``: a volume
    on the cache grid.
    """
    import nibabel as nib

    from ageatlas.core.files import load_npy
    from ageatlas.explain.registration_transform import load_outcome

    cached = participant.cached
    if atlas is not None:
        atlas_path, registration_path = atlas
        registration = load_outcome(registration_path)
        in_body = atlas_in_body(
            registration, nib.load(str(atlas_path)), participant, volume, str(registration_path)
        )
        return in_body, str(atlas_path)
    if reference_path is None:
        raise ValueError("integrated gradients and occlusion need a reference volume or an atlas")
    reference = load_npy(reference_path)
    if reference.shape != cached.shape:
        raise ValueError(
            f"reference volume {reference_path} has shape {reference.shape}, "
            f"the cache {participant.cache_path} {cached.shape}"
        )
    reference = torch.from_numpy(np.array(reference, dtype=np.float32))[None, None]
    return reference.to(volume.device), str(reference_path)


def atlas_in_body(
    registration, atlas, participant, volume: torch.Tensor, registration_name: str = "registration"
) -> torch.Tensor:
    """The group ``atlas`` (NIfTI, the registration's fixed grid) brought into the participant's
    body by ``registration`` (``Registration.pull_back``) and made a reference like ``volume``
    (:func:`atlas_reference`); ``participant`` is a ``gradcam.ParticipantInput``."""
    pulled = registration.pull_back(atlas)
    stitched = participant.stitched
    if pulled.shape != stitched.shape[:3] or not np.allclose(
        pulled.affine, stitched.affine, atol=1e-3
    ):
        raise ValueError(
            f"{registration_name} was fitted to another grid than the stitched image of cache "
            f"{participant.cache_path}"
        )
    data = atlas_reference(
        np.asarray(pulled.dataobj),
        participant.cached,
        volume[0, 0].cpu().numpy(),
        participant.factor,
    )
    return torch.from_numpy(data)[None, None].to(volume.device)


def atlas_reference(
    pulled_atlas: np.ndarray, cached: np.ndarray, model_input: np.ndarray, factor: int
) -> np.ndarray:
    """A participant's reference on the cache grid from their group atlas in their own space.

    ``pulled_atlas`` is the atlas on the participant's stitched grid
    (``Registration.pull_back``; 0 outside the atlas); ``cached`` the
    participant's cache (NaN background, or 0 with background "zero") and
    ``model_input`` their input as the model reads it
    (``preprocess.model_input``). The atlas is block-averaged by ``factor``
    and z-scored over its voxels > 0, as a cache is made from a water image
    (``preprocess.prepare``); where the atlas has no tissue the reference is
    0, the background noise's mean. Where the participant has no tissue the
    reference is their own input, so their background contributes nothing.
    """
    from ageatlas.age.preprocess import downsample, normalise

    atlas = downsample(np.clip(np.asarray(pulled_atlas, dtype=np.float32), 0, None), factor)
    cached = np.asarray(cached, dtype=np.float32)
    if atlas.shape != cached.shape or cached.shape != model_input.shape:
        raise ValueError(
            f"the atlas on the participant's grid, downsampled by {factor}, has shape "
            f"{atlas.shape}, the cache {cached.shape}, the model input {model_input.shape}"
        )
    if not np.any(atlas > 0):
        raise ValueError("the atlas brought into the participant's space holds no tissue")
    drawn = np.isnan(cached)
    tissue = ~drawn if drawn.any() else cached != 0
    reference = normalise(atlas, background="zero")
    return np.where(tissue, reference, model_input).astype(np.float32)


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
