"""Grad-CAM importance maps of the age model, with M3d-CAM's semantics but the subject's geometry.

As M3d-CAM (Gotkowski et al. 2020), which the paper used on layer3: the
gradient of the predicted age (batch of one, eval mode) with respect to the
layer's activations is averaged over space to weight each channel; the map is
ReLU(sum_c weight_c * activation_c), min-max normalised per subject and
upsampled trilinearly (align_corners=False) to the model's input grid.

The target is the predicted age (``target="age"``, the paper). With
``target="deviation"`` it is the predicted age's distance from a reference
age (the training mean): |age - reference|, whose gradient is the age's
gradient times the sign of the deviation. A model whose output bias holds
the mean age (ageatlas.age.train_config's init_output_bias) encodes only deviations from
it; Grad-CAM of the age then shows evidence for "older" in everyone and
nothing of what makes a young participant look young. The deviation target
shows, per participant, the evidence for the side of the mean they were
predicted on (measured on the SYNTHETIC cohort: docs/measurements.md,
"Interpretability stage of the demo").

Unlike M3d-CAM, which writes uint8 maps with an identity affine and
transposed axes, `cam_for_participant` resamples the map onto the
participant's stitched grid and saves it with that image's affine, so the
registration step can warp it like the water image.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from ageatlas.age.model import load_trained
from ageatlas.core.device import pick_device
from ageatlas.core.files import load_npy, nifti_image, save_nifti

log = logging.getLogger("ageatlas.explain.gradcam")

LAYERS = ("layer1", "layer2", "layer3", "layer4")
TARGETS = ("age", "deviation")
_UPSAMPLING = {5: "trilinear", 4: "bilinear"}  # input ndim -> interpolation mode


@dataclass(frozen=True)
class CamResult:
    """map: float32 on the CPU at the input's spatial size ((X, Y, Z), or (H, W) for
    2D inputs); layer_map: the raw ReLU'd map at the layer's resolution (before
    normalising and upsampling)."""

    map: torch.Tensor
    predicted_age: float
    layer_map: torch.Tensor

    @property
    def layer_shape(self) -> tuple[int, ...]:
        return tuple(self.layer_map.shape)


def grad_cam(
    model: nn.Module,
    volume: torch.Tensor,
    layer: nn.Module | None = None,
    *,
    normalise: bool = True,
    target: str = "age",
    reference_age: float | None = None,
) -> CamResult:
    """Grad-CAM of the predicted age for one volume (1, C, X, Y, Z) or one image (1, C, H, W).

    The model runs in eval mode (its previous mode is restored afterwards).
    Gradients are taken with torch.autograd.grad, so no parameter's .grad is
    touched; the forward hook is removed even when the forward pass fails.
    The map is upsampled trilinearly (3D) or bilinearly (2D, the 2.5D baseline).
    ``target`` "deviation" differentiates |age - reference_age| instead of the age.
    """
    sign_of = _target_sign(target, reference_age)
    if volume.ndim not in _UPSAMPLING or volume.shape[0] != 1:
        raise ValueError(
            f"grad_cam needs one volume (1, C, X, Y, Z) or one image (1, C, H, W), "
            f"got shape {tuple(volume.shape)}"
        )
    layer = model.feature_layer if layer is None else layer
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():  # works under a caller's torch.no_grad too
            activation, age = _forward_with_activation(
                model, layer, volume.to(device, torch.float32)
            )
            (gradient,) = torch.autograd.grad(age.sum(), activation)
    finally:
        model.train(was_training)
    predicted_age = float(age.detach().reshape(-1)[0])
    layer_map = _weighted_activation(activation.detach(), gradient * sign_of(predicted_age))
    cam = min_max(layer_map) if normalise else layer_map
    cam = F.interpolate(
        cam[None, None],
        size=tuple(volume.shape[2:]),
        mode=_UPSAMPLING[volume.ndim],
        align_corners=False,
    )
    return CamResult(cam[0, 0].float().cpu(), predicted_age, layer_map.float().cpu())


def _target_sign(target: str, reference_age: float | None):
    """The factor on the age's gradient, as a function of the predicted age."""
    if target not in TARGETS:
        raise ValueError(f"Grad-CAM target must be one of {TARGETS}, not {target!r}")
    if target == "age":
        return lambda age: 1.0
    if reference_age is None or not np.isfinite(reference_age):
        raise ValueError(
            "Grad-CAM target 'deviation' needs a finite reference_age (the training mean age)"
        )
    return lambda age: 1.0 if age >= reference_age else -1.0


def _forward_with_activation(
    model: nn.Module, layer: nn.Module, volume: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the model, making the layer's output a leaf that requires grad.

    A fresh leaf lets us differentiate even when the weights are frozen, and
    keeps backward from reaching earlier layers.
    """
    captured = []

    def hook(module, inputs, output):
        leaf = output.detach().requires_grad_(True)
        captured.append(leaf)
        return leaf

    handle = layer.register_forward_hook(hook)
    try:
        age = model(volume)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(
            f"the Grad-CAM layer ran {len(captured)} times in one forward pass, expected once"
        )
    return captured[0], age


def _weighted_activation(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """ReLU(sum_c mean(grad_c) * act_c) for a batch of one; returns the layer's spatial shape."""
    weights = gradient.mean(dim=tuple(range(2, gradient.ndim)), keepdim=True)
    return torch.relu((weights * activation).sum(dim=1))[0]


def min_max(cam: torch.Tensor) -> torch.Tensor:
    """Min-max to [0, 1]; a constant map (no information) becomes zeros rather than NaN."""
    low, high = cam.min(), cam.max()
    if high <= low:
        return torch.zeros_like(cam)
    return (cam - low) / (high - low)


def cam_for_participant(
    checkpoint,
    cache_path,
    water_nifti_path,
    out_path,
    *,
    layer_name: str = "layer3",
    normalise: bool = True,
    device=None,
    downsample_factor: int | None = None,
    target: str = "age",
    reference_age: float | None = None,
) -> dict:
    """Grad-CAM of one participant's cached input, saved on the stitched grid with its true affine.

    The cache may be the stitched volume block-averaged by an integer factor
    (preprocess.downsample); the factor is inferred from the two shapes unless
    given. Returns {"predicted_age", "seconds", "device"}.
    """
    start = time.perf_counter()
    if layer_name not in LAYERS:
        raise ValueError(f"layer_name must be one of {LAYERS}, not {layer_name!r}")
    stitched = nib.load(
        str(water_nifti_path)
    )  # header only: check the grids before the costly part
    grid_shape = tuple(int(s) for s in stitched.shape[:3])
    cached = load_npy(cache_path)
    factor = _check_or_infer_factor(grid_shape, cached.shape, downsample_factor)

    device = pick_device(device, task="Grad-CAM")
    model, meta = load_trained(checkpoint, device)
    if list(cached.shape) != list(meta.get("input_shape", cached.shape)):
        log.warning(
            "cache %s has shape %s, the model was trained on %s",
            cache_path,
            cached.shape,
            meta["input_shape"],
        )
    volume = torch.from_numpy(np.asarray(cached, dtype=np.float32))[None, None]
    result = grad_cam(
        model,
        volume,
        getattr(model.backbone, layer_name),
        normalise=normalise,
        target=target,
        reference_age=reference_age,
    )
    cam = to_stitched_grid(result.map.numpy(), grid_shape, factor)
    save_nifti(out_path, nifti_image(cam, stitched.affine, reference=stitched))
    return {
        "predicted_age": result.predicted_age,
        "seconds": round(time.perf_counter() - start, 3),
        "device": str(device),
    }


def _check_or_infer_factor(grid_shape, cache_shape, factor: int | None) -> int:
    """The integer factor f with grid // f == cache shape on every axis (downsample drops trailing
    voxels)."""
    cache_shape = tuple(int(s) for s in cache_shape)
    if len(cache_shape) != 3:
        raise ValueError(f"cached input of shape {cache_shape} is not a 3D volume")
    fits = [
        f for f in range(1, min(grid_shape) + 1) if tuple(s // f for s in grid_shape) == cache_shape
    ]
    if factor is not None:
        if factor not in fits:
            raise ValueError(
                f"cache shape {cache_shape} is not stitched grid {grid_shape} "
                f"downsampled by {factor}"
            )
        return int(factor)
    if len(fits) != 1:
        raise ValueError(
            f"cache shape {cache_shape} vs stitched grid {grid_shape}: downsampling factor "
            f"{'ambiguous ' + str(fits) if fits else 'not an integer'}; pass downsample_factor"
        )
    return fits[0]


def cache_affine(stitched_affine: np.ndarray, factor: int) -> np.ndarray:
    """Voxel-to-world affine of a grid downsampled by `factor` with block means.

    Cache voxel i averages stitched voxels f*i .. f*i + f - 1, so its centre is
    stitched voxel f*i + (f - 1)/2: spacing times f, origin shifted by (f - 1)/2 voxels.
    """
    scale = np.diag([factor, factor, factor, 1.0])
    scale[:3, 3] = (factor - 1) / 2
    return np.asarray(stitched_affine, dtype=np.float64) @ scale


def to_stitched_grid(cam: np.ndarray, grid_shape, factor: int) -> np.ndarray:
    """Resample a map on the (downsampled) cache grid onto the stitched grid, linearly.

    Voxels beyond the outermost cache centres (and the trailing voxels that
    downsampling dropped) take the nearest edge value.
    """
    cam = np.asarray(cam, dtype=np.float32)
    if factor == 1 and cam.shape == tuple(grid_shape):
        return cam
    # stitched voxel -> cache voxel; independent of the world affine, which cancels.
    stitched_to_cache = np.linalg.inv(cache_affine(np.eye(4), factor))
    return ndimage.affine_transform(
        cam,
        stitched_to_cache[:3, :3],
        offset=stitched_to_cache[:3, 3],
        output_shape=tuple(grid_shape),
        order=1,
        mode="nearest",
    ).astype(np.float32)
