"""Layer attribution maps of the age model (Grad-CAM and its relatives), on the subject's grid.

Methods (``method``), all from the gradient of the predicted age (batch of one,
eval mode) with respect to one layer's activations A_c:

- ``gradcam``: M3d-CAM's Grad-CAM, which the paper used on layer3: each
  channel weighted by its spatially averaged gradient, ReLU(sum_c w_c A_c).
  For a regression target it keeps only evidence that raises the age.
- ``gradcam_signed``: the same without the ReLU.
- ``hirescam`` (Draelos & Carin 2020): sum_c dy/dA_c * A_c per cell, signed.
  Behind global average pooling and linear layers it is each cell's exact
  contribution to the output; at layer2/layer3 its first-order estimate,
  in years.

Input-level methods with an explicit reference (integrated gradients,
occlusion) are in :mod:`ageatlas.explain.reference_attribution`.

Each layer cell is placed on the centre of its receptive field
(:mod:`ageatlas.explain.cells`, derived from the model's graph); M3d-CAM's
upsampling, half a stride off for strided convolutions, is
``placement="m3dcam"``. Scaling: ``gradcam`` maps are min-max normalised per
subject as M3d-CAM did; signed maps are divided by their largest magnitude
(sign and zero kept); ``normalise=False`` keeps the raw values (years for
hirescam), which is what population maps of magnitudes need.

The target is the predicted age (``target="age"``, the paper). With
``target="deviation"`` it is |age - reference| (the training mean): evidence
for the side of the mean a participant was predicted on.

Unlike M3d-CAM, which writes uint8 maps with an identity affine and
transposed axes, `cam_for_participant` resamples the map onto the
participant's stitched grid and saves it with that image's affine, so the
registration step can warp it like the water image. Many participants with
one model load, several per pass: :mod:`ageatlas.explain.gradcam_batch`.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage
from torch import nn

from ageatlas.age.model import load_trained
from ageatlas.age.preprocess import model_input
from ageatlas.core.device import pick_device
from ageatlas.core.files import load_npy, nifti_image, save_nifti
from ageatlas.core.vocabulary import CAM_METHODS, REFERENCE_METHODS, SIGNED_METHODS
from ageatlas.explain.cells import PLACEMENTS, CellGeometry, cell_geometry, place_cells

log = logging.getLogger("ageatlas.explain.gradcam")

LAYERS = ("layer1", "layer2", "layer3", "layer4")
TARGETS = ("age", "deviation")


@dataclass(frozen=True)
class CamResult:
    """map: float32 on the CPU at the input's spatial size ((X, Y, Z), or (H, W) for
    2D inputs); layer_map: the raw map at the layer's resolution (before scaling and
    placement); geometry: where the layer's cells sit in the input."""

    map: torch.Tensor
    predicted_age: float
    layer_map: torch.Tensor
    geometry: CellGeometry | None = None

    @property
    def layer_shape(self) -> tuple[int, ...]:
        return tuple(self.layer_map.shape)


def grad_cam(
    model: nn.Module,
    volume: torch.Tensor,
    layer: nn.Module | None = None,
    *,
    method: str = "gradcam",
    normalise: bool = True,
    target: str = "age",
    reference_age: float | None = None,
    placement: str = "receptive_field",
) -> CamResult:
    """A layer attribution map of the predicted age for one volume (1, C, X, Y, Z) or image
    (1, C, H, W).

    The model runs in eval mode (its previous mode is restored afterwards).
    Gradients are taken with torch.autograd.grad, so no parameter's .grad is
    touched; the forward hook is removed even when the forward pass fails.
    """
    if volume.ndim not in (4, 5) or volume.shape[0] != 1:
        raise ValueError(
            f"grad_cam needs one volume (1, C, X, Y, Z) or one image (1, C, H, W), "
            f"got shape {tuple(volume.shape)}"
        )
    return layer_cams(
        model,
        volume,
        layer,
        method=method,
        normalise=normalise,
        target=target,
        reference_age=reference_age,
        placement=placement,
    )[0]


def layer_cams(
    model: nn.Module,
    volumes: torch.Tensor,
    layer: nn.Module | None = None,
    *,
    method: str = "gradcam",
    normalise: bool = True,
    target: str = "age",
    reference_age: float | None = None,
    placement: str = "receptive_field",
) -> list[CamResult]:
    """`grad_cam` of each volume of a batch (B, C, ...), from one forward and one backward pass.

    In eval mode no sample's age depends on another's input, so the gradient
    of the summed ages at sample i's activations is sample i's own.
    """
    if method not in CAM_METHODS:
        raise ValueError(f"layer attribution method must be one of {CAM_METHODS}, not {method!r}")
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, not {placement!r}")
    sign_of = target_sign(target, reference_age)
    if volumes.ndim not in (4, 5) or volumes.shape[0] < 1:
        raise ValueError(
            f"layer_cams needs volumes (B, C, X, Y, Z) or images (B, C, H, W), "
            f"got shape {tuple(volumes.shape)}"
        )
    layer = model.feature_layer if layer is None else layer
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():  # works under a caller's torch.no_grad too
            activation, age = _forward_with_activation(
                model, layer, volumes.to(device, torch.float32)
            )
            (gradient,) = torch.autograd.grad(age.sum(), activation)
    finally:
        model.train(was_training)
    activation, input_shape = activation.detach(), tuple(volumes.shape[2:])
    results, geometry = [], None
    for i, predicted_age in enumerate(age.detach().reshape(-1).tolist()):
        one = slice(i, i + 1)
        layer_map = _layer_map(method, activation[one], gradient[one] * sign_of(predicted_age))
        if geometry is None:  # the same for every sample
            geometry = (
                cell_geometry(model, layer, len(input_shape))
                if placement == "receptive_field"
                else CellGeometry.m3dcam(layer_map.shape, input_shape)
            )
        scaled = scale_map(layer_map, method in SIGNED_METHODS) if normalise else layer_map
        cam = place_cells(scaled.float(), geometry, input_shape)
        results.append(
            CamResult(cam.float().cpu(), predicted_age, layer_map.float().cpu(), geometry)
        )
    return results


def _layer_map(method: str, activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """The method's map at the layer's cells, for a batch of one."""
    if method == "hirescam":
        return (gradient * activation).sum(dim=1)[0]
    weights = gradient.mean(dim=tuple(range(2, gradient.ndim)), keepdim=True)
    signed = (weights * activation).sum(dim=1)[0]
    return torch.relu(signed) if method == "gradcam" else signed


def scale_map(cam: torch.Tensor, signed: bool) -> torch.Tensor:
    """Per-subject scaling: min-max for one-sided maps (M3d-CAM), largest magnitude for signed."""
    if not signed:
        return min_max(cam)
    peak = cam.abs().max()
    return cam / peak if peak > 0 else torch.zeros_like(cam)


def target_sign(target: str, reference_age: float | None):
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
    method: str = "gradcam",
    normalise: bool = True,
    placement: str = "receptive_field",
    device=None,
    downsample_factor: int | None = None,
    target: str = "age",
    reference_age: float | None = None,
    reference_path=None,
    atlas=None,
    steps: int = 32,
    block: int = 4,
    shifts: int = 1,
) -> dict:
    """One participant's attribution map of its cached input, saved on the stitched grid with its
    true affine.

    ``method`` is a layer method (:data:`CAM_METHODS`, read at ``layer_name``)
    or an input-level one with a reference (:mod:`reference_attribution`):
    ``reference_path``, a volume on the cache grid such as the mean training
    volume, or ``atlas``, (group atlas, the participant's registration to it)
    paths, the atlas brought into the participant's body; integrated gradients are
    averaged over ``shifts``^3 shifts of the input (``reference_attribution.shift_averaged``).
    The cache may be the stitched volume block-averaged by an integer factor
    (preprocess.downsample); the factor is inferred from the two shapes unless
    given. Returns {"predicted_age", "seconds", "device", ...}.
    """
    from ageatlas.explain import reference_attribution

    start = time.perf_counter()
    if layer_name not in LAYERS:
        raise ValueError(f"layer_name must be one of {LAYERS}, not {layer_name!r}")
    if method not in CAM_METHODS + REFERENCE_METHODS:
        raise ValueError(f"unknown attribution method {method!r}")
    reference_attribution.check_shifts(method, shifts)
    # Header only: check the grids before the costly part.
    participant = read_participant(cache_path, water_nifti_path, downsample_factor)
    cached = participant.cached

    device = pick_device(device, task="Grad-CAM")
    model, meta = load_trained(checkpoint, device)
    check_input_shape(meta, cache_path, cached.shape)
    volume = participant.volume(model_seed(meta))
    info = {}
    if method in CAM_METHODS:
        result = grad_cam(
            model,
            volume,
            getattr(model.backbone, layer_name),
            method=method,
            normalise=normalise,
            target=target,
            reference_age=reference_age,
            placement=placement,
        )
        cam, predicted_age = result.map.numpy(), result.predicted_age
    else:
        if target != "age":
            raise ValueError(f"method {method!r} attributes the predicted age; target must be age")
        reference, info["reference"] = reference_attribution.reference_for(
            participant, volume, reference_path=reference_path, atlas=atlas
        )
        attribution, predicted_age, above_reference = (
            reference_attribution.attribute_against_reference(
                model,
                volume.to(device),
                reference.to(device),
                method,
                steps=steps,
                block=block,
                shifts=shifts,
            )
        )
        cam = (scale_map(attribution, signed=True) if normalise else attribution).numpy()
        info["above_reference"] = round(above_reference, 4)
        info["attribution_sum"] = round(float(attribution.sum()), 4)
    participant.save(cam, out_path)
    return {
        "predicted_age": predicted_age,
        "method": method,
        "seconds": round(time.perf_counter() - start, 3),
        "device": str(device),
        **info,
    }


@dataclass(frozen=True)
class ParticipantInput:
    """A participant's cache, checked against its stitched grid, and where its map goes."""

    cache_path: str
    cached: np.ndarray  # as stored (float16, NaN background)
    stitched: nib.Nifti1Image  # header and affine; its voxels are never read
    factor: int  # cache = stitched grid block-averaged by this factor

    def volume(self, seed: int) -> torch.Tensor:
        """The evaluation read (1, 1, X, Y, Z): background noise drawn as prediction draws it
        (ageatlas.age.preprocess)."""
        return torch.from_numpy(model_input(self.cached, self.cache_path, seed))[None, None]

    def save(self, cam: np.ndarray, out_path) -> None:
        """The map on the stitched grid, with the stitched image's affine and header."""
        grid_shape = tuple(int(s) for s in self.stitched.shape[:3])
        data = to_stitched_grid(cam, grid_shape, self.factor)
        save_nifti(out_path, nifti_image(data, self.stitched.affine, reference=self.stitched))


def read_participant(cache_path, water_nifti_path, downsample_factor: int | None = None):
    """Read a cache and the stitched image's header; a cache not on that grid is an error."""
    stitched = nib.load(str(water_nifti_path))
    grid_shape = tuple(int(s) for s in stitched.shape[:3])
    cached = load_npy(cache_path)
    factor = _check_or_infer_factor(grid_shape, cached.shape, downsample_factor)
    return ParticipantInput(str(cache_path), cached, stitched, factor)


def model_seed(meta: dict) -> int:
    """The seed of a checkpoint's training run: it draws the evaluation noise."""
    return int(meta.get("config", {}).get("seed", 0))


def check_input_shape(meta: dict, cache_path, shape) -> None:
    if list(shape) != list(meta.get("input_shape", shape)):
        log.warning(
            "cache %s has shape %s, the model was trained on %s",
            cache_path,
            tuple(shape),
            meta["input_shape"],
        )


@functools.lru_cache(maxsize=32)
def map_grid(
    method: str, layer_name: str, placement: str, input_shape
) -> tuple[CellGeometry, tuple[int, ...]]:
    """Where a method's map values sit in the model input: (cell geometry, cells shape).

    Layer methods read the age model's layer (architecture only; no weights
    needed); input-level methods have one value per input voxel. Cached: it
    builds and runs a model, and every participant of a run shares the answer.
    """
    from ageatlas.age.model import AgeRegressor

    input_shape = tuple(int(n) for n in input_shape)
    if method not in CAM_METHODS:
        return CellGeometry.identity(len(input_shape)), input_shape
    model = AgeRegressor(hidden=1).eval()
    layer = getattr(model.backbone, layer_name)
    shapes = []
    handle = layer.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[2:])))
    try:
        with torch.no_grad():
            model(torch.zeros((1, 1) + input_shape))
    finally:
        handle.remove()
    geometry = (
        cell_geometry(model, layer, len(input_shape))
        if placement == "receptive_field"
        else CellGeometry.m3dcam(shapes[0], input_shape)
    )
    return geometry, shapes[0]


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
