"""Pairwise image registration with hf-deepali (affine, then SVFFD).

Follows the WholeBodyAtlas recipe (docs/sources.md, "The authors' method"):
images are min-max normalised, clipped at 0.6 and min-max normalised again;
an affine transform (scaling, rotation, translation) is fitted with MSE and
Adam; a stationary velocity free-form deformation is then fitted on a Gaussian
pyramid with LNCC plus B-spline bending energy.

Geometry comes from the NIfTI affines: both images keep their own world
grids, deepali maps between them through world space, so images need not
share a voxel grid. NIfTI affines are RAS; deepali/ITK grids are LPS, hence
the sign flip of the first two world axes in :func:`grid_from_nifti`.

The transform maps points of the fixed grid to the moving image:
``y = affine(svffd(x))``, i.e. the deformation lives in fixed (atlas) space.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from deepali import spatial
from deepali.core import Grid
from deepali.data import Image
from deepali.losses import LNCC, MSE, BSplineBending

from ageatlas.explain.registration_settings import MIN_LEVEL_SIZE, RegistrationSettings

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
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


def grid_from_nifti(affine: np.ndarray, shape) -> Grid:
    """deepali Grid (LPS world, align_corners) for a NIfTI affine and shape."""
    lps = _RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)
    linear = lps[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    direction = linear / spacing
    return Grid(
        size=tuple(int(s) for s in shape[:3]),
        origin=tuple(lps[:3, 3]),
        spacing=tuple(spacing),
        direction=direction,
        align_corners=True,
    )


def _to_tensor(data: np.ndarray) -> torch.Tensor:
    """NIfTI array (i, j, k) to a deepali (C=1, Z, Y, X) tensor."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(data, np.float32).T)).unsqueeze(0)


def _from_tensor(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().reshape(tensor.shape[-3:]).numpy().T


def to_image(img: nib.Nifti1Image, clip: float | None, device) -> Image:
    """deepali image of a NIfTI; ``clip=None`` only min-max normalises it."""
    data = np.asanyarray(img.dataobj)
    data = _minmax(data) if clip is None else normalise_for_registration(data, clip)
    grid = grid_from_nifti(img.affine, img.shape)
    return Image(_to_tensor(data), grid=grid, device=device)


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


def _fit_level(svffd, affine, moving: Image, fixed: Image, settings: RegistrationSettings) -> int:
    """Optimise the SVFFD on one pyramid level; returns the number of steps."""
    transform = spatial.SequentialTransform(svffd, affine)
    transformer = spatial.ImageTransformer(transform, target=fixed.grid(), source=moving.grid())
    optimizer = torch.optim.Adam(svffd.parameters(), lr=settings.deformable_lr)
    kernel = settings.lncc_kernel_for(_voxel_mm(fixed), tuple(fixed.grid().size()))
    similarity = LNCC(kernel_size=kernel[::-1])  # torch pools (z, y, x)
    bending = BSplineBending(stride=1)
    source, target = moving.batch().tensor(), fixed.batch().tensor()
    history: list[float] = []
    for step in range(settings.max_steps):
        loss = similarity(transformer(source), target)
        loss = loss + settings.bending_weight * bending(svffd.data())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
        if _stopped_falling(history, settings):
            return step + 1
    return settings.max_steps


def _stopped_falling(history: list[float], settings: RegistrationSettings) -> bool:
    if len(history) <= settings.patience:
        return False
    before, now = history[-settings.patience - 1], history[-1]
    return before - now < settings.min_delta * max(abs(before), 1e-12)


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
    moving_levels: dict, fixed_levels: dict, affine, settings: RegistrationSettings
):
    """Coarse-to-fine SVFFD; control points are subdivided between levels."""
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
            svffd, affine, moving_levels[level], fixed_levels[level], settings
        )
    svffd.requires_grad_(False)
    return svffd, steps


def _pyramids(moving: Image, fixed: Image, settings: RegistrationSettings):
    moving_levels, fixed_levels = moving.pyramid(settings.levels), fixed.pyramid(settings.levels)
    for name, levels in (("fixed", fixed_levels), ("moving", moving_levels)):
        size = tuple(int(n) for n in levels[max(levels)].grid().size())
        if min(size) < MIN_LEVEL_SIZE:
            raise ValueError(
                f"registration levels {settings.levels} is too many for the {name} image: its "
                f"coarsest level has {size} voxels (x y z), fewer than {MIN_LEVEL_SIZE} along "
                f"an axis; use fewer levels"
            )
    return moving_levels, fixed_levels


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


class Registration:
    """Result of :func:`register`: affine + SVFFD from fixed to moving space."""

    def __init__(self, fixed_grid: Grid, moving_grid: Grid, affine, svffd, settings, metrics=None):
        self.fixed_grid = fixed_grid
        self.moving_grid = moving_grid
        self.affine = affine
        self.svffd = svffd
        self.settings = settings
        self.metrics = dict(metrics or {})

    def transform(self):
        """Full mapping of fixed grid points to the moving image."""
        if self.svffd is None:
            return self.affine
        return spatial.SequentialTransform(self.svffd, self.affine)

    def _transformer(self, sampling: str) -> spatial.ImageTransformer:
        return spatial.ImageTransformer(
            self.transform(),
            target=self.fixed_grid,
            source=self.moving_grid,
            sampling=sampling,
            padding=0,
        )

    def warp_tensor(self, tensor: torch.Tensor, *, order: int = 1) -> torch.Tensor:
        """Warp a (C, Z, Y, X) tensor on the moving grid onto the fixed grid."""
        sampling = {0: "nearest", 1: "linear"}[order]
        transformer = self._transformer(sampling)
        batch = tensor.unsqueeze(0).float().to(transformer.grid_coords.device)
        with torch.no_grad():
            return transformer(batch)[0].cpu()

    def coverage(self) -> np.ndarray:
        """Voxels of the fixed grid (NIfTI order) that map into the moving image's field of view.

        A ones image on the moving grid, warped with zero fill: a fixed voxel
        is covered where that is at least 0.5, i.e. within half a voxel of the
        moving grid's outermost voxel centres.
        """
        ones = torch.ones((1, *self.moving_grid.shape), dtype=torch.float32)
        return _from_tensor(self.warp_tensor(ones, order=1)) >= 0.5

    def warp(
        self, image: nib.Nifti1Image, *, order: int = 1, mark_outside: bool = False
    ) -> nib.Nifti1Image:
        """Resample an image in the moving space into the fixed space.

        ``order=0`` (nearest) keeps label values; ``order=1`` is trilinear.
        Outside the moving image's field of view the result is 0, or NaN with
        ``mark_outside`` (maps whose population statistics must leave those
        voxels out: :meth:`coverage`); labels (``order=0``) keep 0.
        """
        if mark_outside and order == 0:
            raise ValueError("mark_outside needs order=1: a label map cannot hold NaN")
        same_shape = tuple(image.shape[:3]) == tuple(self.moving_grid.shape[::-1])
        # 1e-3 mm tolerance: grids round-trip through float32 on save/load.
        if not (
            same_shape and np.allclose(image.affine, _nifti_affine(self.moving_grid), atol=1e-3)
        ):
            raise ValueError("image is not on the moving image's grid")
        data = np.asanyarray(image.dataobj)
        out = _from_tensor(self.warp_tensor(_to_tensor(data), order=order))
        out = out.astype(data.dtype) if order == 0 else out.astype(np.float32)
        if mark_outside:
            out[~self.coverage()] = np.nan
        return nib.Nifti1Image(out, _nifti_affine(self.fixed_grid))

    def displacement_mm(self) -> np.ndarray:
        """World displacement (LPS mm) of every fixed-grid voxel, shape (Z, Y, X, 3).

        ``moving point - fixed point``: where each atlas voxel's anatomy sits
        in the moving image. Template building averages these fields.
        """
        transform = self.transform()
        grid = self.fixed_grid
        cube = grid.coords(align_corners=transform.align_corners())
        points = grid.transform_points(cube, axes=transform.axes(), to_grid=transform.grid())
        with torch.no_grad():
            moved = transform(points.unsqueeze(0).to(_device(transform)))[0].cpu()
        world_moved = transform.grid().cube_to_world(moved)
        return (world_moved - grid.cube_to_world(cube)).numpy()

    def save(self, path) -> None:
        torch.save(
            {
                "fixed_grid": torch.from_numpy(self.fixed_grid.numpy()),
                "moving_grid": torch.from_numpy(self.moving_grid.numpy()),
                "affine": dict(self.affine.state_dict()),
                "svffd": None if self.svffd is None else _svffd_state(self.svffd),
                "settings": _settings_state(self.settings),
                "metrics": dict(self.metrics),
            },
            Path(path),
        )

    @classmethod
    def load(cls, path) -> Registration:
        return cls.from_state(torch.load(Path(path), weights_only=True))

    @classmethod
    def from_state(cls, state: dict) -> Registration:
        """A registration from the dict :meth:`save` writes."""
        fixed_grid = Grid.from_numpy(state["fixed_grid"].numpy(), align_corners=True)
        moving_grid = Grid.from_numpy(state["moving_grid"].numpy(), align_corners=True)
        settings = _settings_from_state(state["settings"])
        affine = spatial.AffineTransform(fixed_grid)
        affine.load_state_dict(state["affine"])
        svffd = None if state["svffd"] is None else _svffd_from_state(state["svffd"])
        return cls(fixed_grid, moving_grid, affine, svffd, settings, state["metrics"])


def _device(transform) -> torch.device:
    return next(iter(transform.buffers()), torch.empty(0)).device


def _nifti_affine(grid: Grid) -> np.ndarray:
    """NIfTI (RAS) affine of a deepali grid: index -> world, back from LPS."""
    linear = grid.direction().numpy() * grid.spacing().numpy()
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = linear, grid.origin().numpy()
    return _RAS_TO_LPS @ affine


def _svffd_state(svffd) -> dict:
    return {
        "grid": torch.from_numpy(svffd.grid().numpy()),
        "params": svffd.data().detach().cpu().clone(),
        "stride": list(svffd.stride),
        "steps": int(svffd.exp.steps),
    }


def _svffd_from_state(state: dict):
    grid = Grid.from_numpy(state["grid"].numpy(), align_corners=True)
    svffd = spatial.StationaryVelocityFreeFormDeformation(
        grid, stride=tuple(state["stride"]), steps=state["steps"], params=False
    )
    svffd.data_(state["params"])
    return svffd


def _settings_state(settings: RegistrationSettings) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()}


def _settings_from_state(state: dict) -> RegistrationSettings:
    """Settings as saved; a transform saved before the millimetre settings keeps its voxel ones."""
    return RegistrationSettings.from_dict(state)


def register(
    moving: nib.Nifti1Image,
    fixed: nib.Nifti1Image,
    settings: RegistrationSettings = RegistrationSettings(),
    *,
    device=None,
    fixed_normalised: bool = False,
) -> Registration:
    """Register ``moving`` to ``fixed``: affine (MSE), then SVFFD (LNCC + bending).

    ``fixed_normalised``: the fixed image is a template built from images
    already normalised with the recipe, so clipping it again would flatten
    it; it is only min-max scaled.
    """
    device = torch.device(device or "cpu")
    start = time.perf_counter()
    moving_img = to_image(moving, settings.clip, device)
    fixed_img = to_image(fixed, None if fixed_normalised else settings.clip, device)
    target = fixed_img.batch().tensor()[0].cpu()
    identity = Registration(
        fixed_img.grid(),
        moving_img.grid(),
        spatial.AffineTransform(fixed_img.grid()),
        None,
        settings,
    )
    metrics = {"before": _similarity(identity.warp_tensor(moving_img.tensor()), target)}

    moving_levels, fixed_levels = _pyramids(moving_img, fixed_img, settings)
    finest = settings.finest_level
    affine = _fit_affine(moving_levels[finest], fixed_levels[finest], settings)
    result = Registration(fixed_img.grid(), moving_img.grid(), affine, None, settings)
    metrics["affine"] = _similarity(result.warp_tensor(moving_img.tensor()), target)

    svffd, steps = _fit_deformable(moving_levels, fixed_levels, affine, settings)
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


class RegistrationFailed(RuntimeError):
    """A registration that failed or did not pass QC; its record says why."""


def register_files(
    moving_path,
    fixed_path,
    settings: RegistrationSettings,
    *,
    max_folding_share: float,
    fixed_normalised: bool = False,
    device=None,
) -> tuple[Registration | None, dict]:
    """Register one image file to another and judge the result.

    Never raises for a bad participant: an unreadable image or a crashed
    optimisation is a failed record (status, reasons), like failed QC, so
    one participant cannot stop thousands. Returns (registration or None, record).
    """
    try:
        result = register(
            nib.load(str(moving_path)),
            nib.load(str(fixed_path)),
            settings,
            device=device,
            fixed_normalised=fixed_normalised,
        )
    except Exception as exc:  # noqa: BLE001 - any failure is this participant's QC result
        return None, {"status": "failed", "reasons": [f"{type(exc).__name__}: {exc}"]}
    reasons = qc_reasons(result.metrics, max_folding_share)
    record = {"status": "failed" if reasons else "ok", "reasons": reasons, **result.metrics}
    return (None if reasons else result), record


def save_outcome(
    registration: Registration | None, record: dict, transform_path, record_path
) -> None:
    """Write the transform (or a failure marker) and its JSON record."""
    if registration is not None:
        registration.save(transform_path)
    else:
        torch.save({"failed": "; ".join(record["reasons"])}, Path(transform_path))
    Path(record_path).write_text(json.dumps(record, indent=2, default=float) + "\n")


def load_outcome(transform_path) -> Registration:
    """Load a saved transform; a failure marker raises RegistrationFailed with its reason."""
    state = torch.load(Path(transform_path), weights_only=True)
    if "failed" in state:
        raise RegistrationFailed(f"{transform_path}: registration failed: {state['failed']}")
    return Registration.from_state(state)
