"""Pairwise image registration with hf-deepali (affine, then SVFFD).

Follows the WholeBodyAtlas recipe (docs/sources.md, "The authors' method"):
images are min-max normalised, clipped at 0.6 and min-max normalised again;
an affine transform (scaling, rotation, translation) is fitted with MSE and
Adam; a stationary velocity free-form deformation is then fitted on a Gaussian
pyramid with LNCC plus B-spline bending energy.

Geometry comes from the NIfTI affines: both images keep their own world
grids, deepali maps between them through world space, so images need not
share a voxel grid (RAS to LPS: `registration_transform.grid_from_nifti`).
The result, a `Registration`, maps points of the fixed grid to the moving
image: ``y = affine(svffd(x))``, i.e. the deformation lives in fixed (atlas)
space (`ageatlas.explain.registration_transform`).

An image may have several channels on one grid (``registration.channels``,
e.g. water and fat), each normalised on its own; the similarities average
over them, so one transform aligns what any channel shows.

Registration runs on the device given (a GPU when there is one): the images,
their pyramids and the fitted transforms live there. Many participants to
one atlas (`register_many`) prepare the atlas once.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import torch
from deepali import spatial
from deepali.core.enum import FlowDerivativeKeys
from deepali.core.flow import flow_derivatives
from deepali.data import Image
from deepali.losses import LNCC, MSE

from ageatlas.explain.registration_settings import MIN_LEVEL_SIZE, RegistrationSettings

# The transform, its warping and its file; re-exported: the workflow's scripts and the atlas
# and truth modules import them from here.
from ageatlas.explain.registration_transform import (  # noqa: F401
    Registration,
    RegistrationFailed,
    grid_from_nifti,
    load_outcome,
    save_outcome,
    to_tensor,
)

# A registration image: one NIfTI, or several on one grid whose LNCC (and MSE for the affine
# step) is averaged over them, e.g. (water, fat).
Channels = nib.Nifti1Image | Sequence[nib.Nifti1Image]

# Registering an image to itself can lose a little similarity to optimiser
# noise; only a loss beyond this NCC is "made it worse".
NCC_TOLERANCE = 0.01
# deepali 0.6 indexes with lists, which torch deprecates; it says so at every
# B-spline evaluation, drowning the job logs.
warnings.filterwarnings("ignore", message="Using a non-tuple sequence", category=UserWarning)


def normalise_for_registration(image: np.ndarray, clip: float = 0.6) -> np.ndarray:
    """Min-max to [0, 1], clip at ``clip``, min-max again (authors' recipe)."""
    image = _minmax(np.asarray(image, dtype=np.float32))
    return _minmax(np.minimum(image, clip))


def _minmax(image: np.ndarray) -> np.ndarray:
    low, high = float(image.min()), float(image.max())
    if high <= low:
        return np.zeros_like(image, dtype=np.float32)
    return ((image - low) / (high - low)).astype(np.float32)


def to_image(images: Channels, clip: float | None, device) -> Image:
    """deepali image of one NIfTI or of several on one grid (channels, e.g. water and fat),
    each normalised on its own; ``clip=None`` only min-max normalises them."""
    images = channels_of(images)
    for other in images[1:]:
        if other.shape[:3] != images[0].shape[:3] or not np.allclose(
            other.affine, images[0].affine, atol=1e-3
        ):
            raise ValueError("the channels of a registration image are not on one grid")
    tensors = []
    for img in images:
        data = np.asanyarray(img.dataobj)
        data = _minmax(data) if clip is None else normalise_for_registration(data, clip)
        tensors.append(to_tensor(data))
    grid = grid_from_nifti(images[0].affine, images[0].shape)
    return Image(torch.cat(tensors), grid=grid, device=device)


def channels_of(images: Channels) -> list[nib.Nifti1Image]:
    return [images] if isinstance(images, nib.Nifti1Image) else list(images)


def load_channels(paths) -> list[nib.Nifti1Image]:
    """The image(s) of one path or of a sequence of paths (channels on one grid)."""
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    return [nib.load(str(path)) for path in paths]


def _ncc(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float((a @ b) / (a.norm() * b.norm() + 1e-12))


def _similarity(warped: torch.Tensor, fixed: torch.Tensor) -> dict:
    return {"ncc": _ncc(warped, fixed), "mse": float(((warped - fixed) ** 2).mean())}


def _fit_affine(moving: Image, fixed: Image, settings: RegistrationSettings):
    transform = spatial.AffineTransform(fixed.grid()).to(fixed.device)
    transformer = spatial.ImageTransformer(transform, target=fixed.grid(), source=moving.grid())
    optimizer = torch.optim.Adam(transform.parameters(), lr=settings.affine_lr)
    loss_fn, source, target = MSE(), moving.batch().tensor(), fixed.batch().tensor()
    for _ in range(settings.affine_iterations):
        loss = loss_fn(transformer(source), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    transform.requires_grad_(False)
    return transform


def _voxel_mm(image: Image) -> tuple[float, ...]:
    return tuple(float(v) for v in image.grid().spacing())


def _fit_level(
    svffd, affine, moving: Image, fixed: Image, settings: RegistrationSettings, trace=None
) -> int:
    """Optimise the SVFFD on one pyramid level; returns the number of steps.

    The level ends on the parameters with the lowest loss it evaluated, its
    start included, so it never leaves the transform worse by its own
    objective than it found it. Adam's first steps move every control point
    by about the learning rate whatever its gradient: on a finer level's new
    control points this roughens the field (the demo's bending energy rose
    77-fold in 5 steps), and a level stopped in that transient used to keep
    it. ``warmup_steps`` raises the learning rate linearly to soften it.
    ``trace``, a list, gets (LNCC, weighted bending energy) of every step.
    """
    objective = level_objective(svffd, affine, moving, fixed, settings)
    optimizer = torch.optim.Adam(svffd.parameters(), lr=settings.deformable_lr)
    warmup = max(1, settings.warmup_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: min(1.0, (i + 1) / warmup))
    best, steps = _Best(), 0
    for _ in range(settings.max_steps):
        similarity, bending = objective()
        loss = similarity + bending
        steps += 1
        if trace is not None:
            trace.append((float(similarity.detach()), float(bending.detach())))
        best.see(float(loss.detach()), svffd.data(), settings.min_delta)
        if best.steps_since_gain >= settings.patience:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        svffd.data().copy_(best.params)
    return steps


def level_objective(svffd, affine, moving: Image, fixed: Image, settings: RegistrationSettings):
    """The loss one pyramid level minimises, as a function of the SVFFD's current parameters:
    (LNCC of the warped moving image with the fixed one, the weighted bending energy)."""
    transform = spatial.SequentialTransform(svffd, affine)
    transformer = spatial.ImageTransformer(transform, target=fixed.grid(), source=moving.grid())
    kernel = settings.lncc_kernel_for(_voxel_mm(fixed), tuple(fixed.grid().size()))
    similarity = LNCC(kernel_size=kernel[::-1])  # torch pools (z, y, x)
    source, target = moving.batch().tensor(), fixed.batch().tensor()

    def terms() -> tuple[torch.Tensor, torch.Tensor]:
        bending = settings.bending_weight * bending_energy(svffd.data())
        return similarity(transformer(source), target), bending

    return terms


class _Best:
    """The lowest loss seen and its parameters; steps since the loss last fell by more than
    ``min_delta`` (relative) below the best: "stops falling"."""

    def __init__(self) -> None:
        self.loss, self.params, self.steps_since_gain = float("inf"), None, 0

    def see(self, loss: float, params: torch.Tensor, min_delta: float) -> None:
        gain = loss < self.loss - min_delta * abs(self.loss) if self.params is not None else True
        self.steps_since_gain = 0 if gain else self.steps_since_gain + 1
        if loss < self.loss:
            self.loss, self.params = loss, params.detach().clone()


def bending_energy(params: torch.Tensor) -> torch.Tensor:
    """The bending energy of a cubic B-spline's control points, as deepali's
    ``BSplineBending(stride=1)``, with its terms built one derivative at a time in a fixed
    order.

    deepali builds them in the order of a set of strings, which follows Python's hash seed:
    the gradient's rounding, and through the optimiser every deformable registration, then
    changed from one process to the next (a rerun of the demo gave other atlases, and Dice
    moved by up to 0.005).
    """
    keys = FlowDerivativeKeys.all(spatial_dims=params.shape[1], order=2)
    total = None
    for key in sorted(FlowDerivativeKeys.unique(keys)):
        term = flow_derivatives(params, which=[key], mode="bspline", stride=1)[key].square()
        if FlowDerivativeKeys.is_mixed(key):
            term = 2 * term
        total = term if total is None else total + term
    return total.mean()


def level_plan(fixed_levels: dict, settings: RegistrationSettings) -> dict:
    """What each fitted pyramid level uses: voxel size, control-point spacing, LNCC window.

    The stride is chosen once, at ``finest_level``, from
    ``control_point_spacing_mm``; the SVFFD keeps it while its control points
    are subdivided, so each coarser level has twice the spacing.
    """
    stride = settings.stride_for(_voxel_mm(fixed_levels[settings.finest_level]))
    plan = {}
    for level in range(max(fixed_levels), settings.finest_level - 1, -1):
        voxel = _voxel_mm(fixed_levels[level])
        plan[level] = {
            "voxel_mm": [round(v, 3) for v in voxel],
            "stride": list(stride),
            "control_point_spacing_mm": [round(s * v, 2) for s, v in zip(stride, voxel)],
            "lncc_kernel": list(
                settings.lncc_kernel_for(voxel, tuple(fixed_levels[level].grid().size()))
            ),
        }
    return plan


def _fit_deformable(
    moving_levels: dict, fixed_levels: dict, affine, settings: RegistrationSettings, trace=None
):
    """Coarse-to-fine SVFFD; control points are subdivided between levels. ``trace``, a dict,
    gets each level's list of (LNCC, weighted bending energy) per step."""
    coarsest = max(fixed_levels)
    svffd = spatial.StationaryVelocityFreeFormDeformation(
        fixed_levels[coarsest].grid(),
        stride=settings.stride_for(_voxel_mm(fixed_levels[settings.finest_level])),
        steps=settings.scaling_squaring_steps,
    ).to(fixed_levels[coarsest].device)
    steps = {}
    for level in range(coarsest, settings.finest_level - 1, -1):
        if level != coarsest:
            svffd.grid_(fixed_levels[level].grid())
        steps[level] = _fit_level(
            svffd,
            affine,
            moving_levels[level],
            fixed_levels[level],
            settings,
            None if trace is None else trace.setdefault(level, []),
        )
    svffd.requires_grad_(False)
    return svffd, steps


def _pyramid(image: Image, settings: RegistrationSettings, name: str) -> dict:
    levels = image.pyramid(settings.levels, dims=list(settings.pyramid_axes))
    size = tuple(int(n) for n in levels[max(levels)].grid().size())
    if min(size) < MIN_LEVEL_SIZE:
        raise ValueError(
            f"registration levels {settings.levels} is too many for the {name} image: its "
            f"coarsest level has {size} voxels (x y z), fewer than {MIN_LEVEL_SIZE} along "
            f"an axis; use fewer levels"
        )
    return levels


def folding_share(svffd) -> float:
    """Share of voxels where a non-rigid transform (e.g. the SVFFD) has det J <= 0."""
    with torch.no_grad():
        u = svffd.tensor()[0].cpu().numpy().astype(np.float64)  # (3, Z, Y, X), x/y/z channels
    size = np.array(u.shape[:0:-1], dtype=np.float64)  # (X, Y, Z)
    # align_corners cube units -> voxel units; positive scaling keeps the sign of det J.
    voxel = [u[c] * (size[c] - 1) / 2 for c in range(3)]
    axes = {0: 2, 1: 1, 2: 0}  # spatial axis x, y, z -> array axis of (Z, Y, X)
    jac = np.empty(u.shape[1:] + (3, 3))
    for c in range(3):
        for d in range(3):
            jac[..., c, d] = np.gradient(voxel[c], axis=axes[d]) + (c == d)
    return float(np.mean(np.linalg.det(jac) <= 0))


@dataclass(frozen=True)
class FixedImage:
    """The fixed image (an atlas) prepared once for many registrations: normalised, on the
    device, with its pyramid and the CPU copy that similarities are measured against."""

    image: Image
    levels: dict
    target: torch.Tensor
    settings: RegistrationSettings


def prepare_fixed(
    fixed: Channels,
    settings: RegistrationSettings = RegistrationSettings(),
    *,
    device=None,
    fixed_normalised: bool = False,
) -> FixedImage:
    """``fixed_normalised``: the fixed image is a template built from images already normalised
    with the recipe, so clipping it again would flatten it; it is only min-max scaled."""
    image = to_image(
        fixed, None if fixed_normalised else settings.clip, torch.device(device or "cpu")
    )
    levels = _pyramid(image, settings, "fixed")
    return FixedImage(image, levels, image.batch().tensor()[0].cpu(), settings)


def register(
    moving: Channels,
    fixed: Channels,
    settings: RegistrationSettings = RegistrationSettings(),
    *,
    device=None,
    fixed_normalised: bool = False,
    trace: dict | None = None,
) -> Registration:
    """Register ``moving`` to ``fixed``: affine (MSE), then SVFFD (LNCC + bending).

    ``fixed_normalised``: see :func:`prepare_fixed`. ``trace``, a dict, gets each pyramid
    level's (LNCC, weighted bending energy) per deformable step (benchmarks/registration.py).
    """
    start = time.perf_counter()
    prepared = prepare_fixed(fixed, settings, device=device, fixed_normalised=fixed_normalised)
    result = register_to(moving, prepared, trace=trace)
    result.metrics["seconds"] = time.perf_counter() - start
    return result


def register_to(moving: Channels, fixed: FixedImage, trace: dict | None = None) -> Registration:
    """Register ``moving`` to a prepared fixed image, on its device, with its settings; the
    metrics' seconds leave the fixed image's preparation out. Both have the same channels."""
    start = time.perf_counter()
    settings, target = fixed.settings, fixed.target
    fixed_img, fixed_levels = fixed.image, fixed.levels
    moving_img = to_image(moving, settings.clip, fixed_img.device)
    if moving_img.shape[0] != fixed_img.shape[0]:
        raise ValueError(
            f"the moving image has {moving_img.shape[0]} channel(s), the fixed image "
            f"{fixed_img.shape[0]}"
        )
    identity = Registration(
        fixed_img.grid(),
        moving_img.grid(),
        spatial.AffineTransform(fixed_img.grid()),
        None,
        settings,
    )
    metrics = {"before": _similarity(identity.warp_tensor(moving_img.tensor()), target)}

    moving_levels = _pyramid(moving_img, settings, "moving")
    level = settings.affine_fit_level
    affine = _fit_affine(moving_levels[level], fixed_levels[level], settings)
    result = Registration(fixed_img.grid(), moving_img.grid(), affine, None, settings)
    metrics["affine"] = _similarity(result.warp_tensor(moving_img.tensor()), target)
    metrics["affine_level"] = level

    svffd, steps = _fit_deformable(moving_levels, fixed_levels, affine, settings, trace)
    result.svffd = svffd
    metrics["deformable"] = _similarity(result.warp_tensor(moving_img.tensor()), target)
    metrics["deformable_steps"] = steps
    metrics["levels"] = level_plan(fixed_levels, settings)
    metrics["folding_share"] = folding_share(svffd)
    metrics["seconds"] = time.perf_counter() - start
    result.metrics = metrics
    return result


def qc_reasons(metrics: dict, max_folding_share: float) -> list[str]:
    """Why a registration is not to be trusted; empty when it passed.

    Fails when a similarity is not finite, when the deformable result is
    less similar to the fixed image than the unregistered one (by more than
    ``NCC_TOLERANCE``), or when more
    than ``max_folding_share`` of the voxels fold (det J <= 0).
    """
    ncc = {stage: metrics[stage]["ncc"] for stage in ("before", "affine", "deformable")}
    if not all(np.isfinite(v) for v in ncc.values()):
        return [f"non-finite similarity: NCC {ncc}"]
    reasons = []
    if ncc["deformable"] < ncc["before"] - NCC_TOLERANCE:
        reasons.append(
            f"registration made it worse: NCC {ncc['before']:.3f} before, "
            f"{ncc['deformable']:.3f} after"
        )
    if metrics["folding_share"] > max_folding_share:
        reasons.append(
            f"folding: {metrics['folding_share']:.2%} of voxels have det J <= 0 "
            f"(limit {max_folding_share:.2%})"
        )
    return reasons


def register_files(
    moving_path,
    fixed_path,
    settings: RegistrationSettings,
    *,
    max_folding_share: float,
    fixed_normalised: bool = False,
    device=None,
) -> tuple[Registration | None, dict]:
    """Register one image file to another and judge the result; either may be a sequence of
    files, one per channel (the same number for both).

    Never raises for a bad participant: an unreadable image or a crashed
    optimisation is a failed record (status, reasons), like failed QC, so
    one participant cannot stop thousands. Returns (registration or None, record).
    """
    try:
        fixed = prepare_fixed(
            load_channels(fixed_path), settings, device=device, fixed_normalised=fixed_normalised
        )
    except Exception as exc:  # noqa: BLE001 - any failure is this participant's QC result
        return None, _failed(exc)
    return register_prepared(moving_path, fixed, max_folding_share)


def register_many(
    moving_paths: Iterable,
    fixed_path,
    settings: RegistrationSettings,
    *,
    max_folding_share: float,
    fixed_normalised: bool = False,
    device=None,
) -> Iterator[tuple[Registration | None, dict]]:
    """`register_files` for many moving images to one fixed image (an atlas), which is read,
    normalised and moved to the device once: one (registration or None, record) per image, in
    order, as they are done.

    A participant's failure is its record; an unreadable fixed image raises
    here, before any participant (it is the job's input, not theirs).
    """
    fixed = prepare_fixed(
        load_channels(fixed_path), settings, device=device, fixed_normalised=fixed_normalised
    )
    return (register_prepared(path, fixed, max_folding_share) for path in moving_paths)


def register_prepared(moving_path, fixed: FixedImage, max_folding_share: float):
    """`register_files` to an atlas already prepared (:func:`prepare_fixed`)."""
    try:
        result = register_to(load_channels(moving_path), fixed)
    except Exception as exc:  # noqa: BLE001 - any failure is this participant's QC result
        return None, _failed(exc)
    reasons = qc_reasons(result.metrics, max_folding_share)
    record = {"status": "failed" if reasons else "ok", "reasons": reasons, **result.metrics}
    return (None if reasons else result), record


def _failed(exc: Exception) -> dict:
    return {"status": "failed", "reasons": [f"{type(exc).__name__}: {exc}"]}
