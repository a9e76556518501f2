"""The result of a registration: the atlas-to-participant transform, warping with it, and its
file.

A `Registration` maps points of the fixed grid (the atlas) to the moving
image: ``y = affine(svffd(x))``. It is stored in deepali's cube coordinates
with both grids, so a transform fitted at half resolution warps
full-resolution maps. NIfTI affines are RAS; deepali/ITK grids are LPS,
hence the sign flip of the first two world axes in :func:`grid_from_nifti`.

It warps where its parameters are (`Registration.to` moves them, as
``nn.Module.to`` does); its file always holds CPU tensors and loads on the
CPU, so a transform fitted on a GPU warps on a CPU-only node.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from deepali import spatial
from deepali.core import Grid

from ageatlas.explain.registration_settings import RegistrationSettings

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


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


def to_tensor(data: np.ndarray) -> torch.Tensor:
    """NIfTI array (i, j, k) to a deepali (C=1, Z, Y, X) tensor."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(data, np.float32).T)).unsqueeze(0)


def from_tensor(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().reshape(tensor.shape[-3:]).numpy().T


class Registration:
    """Result of `ageatlas.explain.register.register`: affine + SVFFD from fixed to moving
    space."""

    def __init__(self, fixed_grid: Grid, moving_grid: Grid, affine, svffd, settings, metrics=None):
        self.fixed_grid = fixed_grid
        self.moving_grid = moving_grid
        self.affine = affine
        self.svffd = svffd
        self.settings = settings
        self.metrics = dict(metrics or {})

    @property
    def device(self) -> torch.device:
        return self.affine.device

    def to(self, device) -> Registration:
        """Move the transform to `device`, in place (as nn.Module.to); warping runs where it is."""
        self.affine.to(device)
        if self.svffd is not None:
            self.svffd.to(device)
        return self

    def transform(self):
        """Full mapping of fixed grid points to the moving image."""
        if self.svffd is None:
            return self.affine
        return spatial.SequentialTransform(self.svffd, self.affine)

    def _transformer(self, sampling: str, inverse: bool = False) -> spatial.ImageTransformer:
        if inverse:  # fixed image into the moving space
            transform, target, source = (
                self.transform().inverse(),
                self.moving_grid,
                self.fixed_grid,
            )
        else:
            transform, target, source = self.transform(), self.fixed_grid, self.moving_grid
        return spatial.ImageTransformer(
            transform, target=target, source=source, sampling=sampling, padding=0
        )

    def warp_tensor(
        self, tensor: torch.Tensor, *, order: int = 1, inverse: bool = False
    ) -> torch.Tensor:
        """Warp a (C, Z, Y, X) tensor on the moving grid onto the fixed grid (``inverse``: on
        the fixed grid onto the moving grid)."""
        sampling = {0: "nearest", 1: "linear"}[order]
        transformer = self._transformer(sampling, inverse)
        batch = tensor.unsqueeze(0).float().to(transformer.grid_coords.device)
        with torch.no_grad():
            return transformer(batch)[0].cpu()

    @staticmethod
    def _check_on(image: nib.Nifti1Image, grid: Grid, name: str) -> None:
        same_shape = tuple(image.shape[:3]) == tuple(grid.shape[::-1])
        # 1e-3 mm tolerance: grids round-trip through float32 on save/load.
        if not (same_shape and np.allclose(image.affine, _nifti_affine(grid), atol=1e-3)):
            raise ValueError(f"image is not on the {name} grid")

    def coverage(self) -> np.ndarray:
        """Voxels of the fixed grid (NIfTI order) that map into the moving image's field of view.

        A ones image on the moving grid, warped with zero fill: a fixed voxel
        is covered where that is at least 0.5, i.e. within half a voxel of the
        moving grid's outermost voxel centres.
        """
        ones = torch.ones((1, *self.moving_grid.shape), dtype=torch.float32)
        return from_tensor(self.warp_tensor(ones, order=1)) >= 0.5

    def warp(
        self,
        image: nib.Nifti1Image,
        *,
        order: int = 1,
        mark_outside: bool = False,
        device=None,
    ) -> nib.Nifti1Image:
        """Resample an image in the moving space into the fixed space.

        ``order=0`` (nearest) keeps label values; ``order=1`` is trilinear.
        Outside the moving image's field of view the result is 0, or NaN with
        ``mark_outside`` (maps whose population statistics must leave those
        voxels out: :meth:`coverage`); labels (``order=0``) keep 0. ``device``
        moves the transform there first (and it stays there); the result is
        on the CPU either way.
        """
        if device is not None:
            self.to(device)
        if mark_outside and order == 0:
            raise ValueError("mark_outside needs order=1: a label map cannot hold NaN")
        self._check_on(image, self.moving_grid, "moving image's")
        data = np.asanyarray(image.dataobj)
        out = from_tensor(self.warp_tensor(to_tensor(data), order=order))
        out = out.astype(data.dtype) if order == 0 else out.astype(np.float32)
        if mark_outside:
            out[~self.coverage()] = np.nan
        return nib.Nifti1Image(out, _nifti_affine(self.fixed_grid))

    def pull_back(self, image: nib.Nifti1Image) -> nib.Nifti1Image:
        """An image on the fixed grid (the atlas) resampled into the moving image's space
        (trilinear, 0 outside the atlas), through the inverse transform.

        The inverse is exact up to interpolation: the affine's matrix inverse and
        the SVFFD's negated velocity field (deepali's ``inverse``). It brings the
        group's atlas into a participant's body, e.g. as an attribution reference.
        """
        self._check_on(image, self.fixed_grid, "fixed (atlas)")
        out = from_tensor(self.warp_tensor(to_tensor(np.asanyarray(image.dataobj)), inverse=True))
        return nib.Nifti1Image(out.astype(np.float32), _nifti_affine(self.moving_grid))

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
            moved = transform(points.unsqueeze(0).to(transform.device))[0].cpu()
        world_moved = transform.grid().cube_to_world(moved)
        return (world_moved - grid.cube_to_world(cube)).numpy()

    def save(self, path) -> None:
        torch.save(
            {
                "fixed_grid": torch.from_numpy(self.fixed_grid.numpy()),
                "moving_grid": torch.from_numpy(self.moving_grid.numpy()),
                # CPU tensors: a transform fitted on a GPU loads on a node without one
                "affine": {k: v.cpu() for k, v in self.affine.state_dict().items()},
                "svffd": None if self.svffd is None else _svffd_state(self.svffd),
                "settings": _settings_state(self.settings),
                "metrics": dict(self.metrics),
            },
            Path(path),
        )

    @classmethod
    def load(cls, path) -> Registration:
        return cls.from_state(torch.load(Path(path), map_location="cpu", weights_only=True))

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


class RegistrationFailed(RuntimeError):
    """A registration that failed or did not pass QC; its record says why."""


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
    state = torch.load(Path(transform_path), map_location="cpu", weights_only=True)
    if "failed" in state:
        raise RegistrationFailed(f"{transform_path}: registration failed: {state['failed']}")
    return Registration.from_state(state)
