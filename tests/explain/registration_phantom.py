"""A small SYNTHETIC moving/fixed pair for the registration tests: a soft ellipsoid body with an
off-centre inner organ, the moving one scaled, shifted and bent, on anisotropic grids with a
flipped first axis."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from ageatlas.explain.registration_settings import RegistrationSettings

SHAPE = (32, 32, 48)
SPACING = (2.232, 2.232, 3.0)
FAST = RegistrationSettings(
    affine_iterations=40, affine_lr=0.05, levels=2, deformable_lr=1e-2, max_steps=20
)


def grid_affine(origin) -> np.ndarray:
    """Voxel-to-world affine: non-identity orientation (flipped first axis), anisotropic."""
    affine = np.diag([-SPACING[0], SPACING[1], SPACING[2], 1.0])
    affine[:3, 3] = origin
    return affine


def world_points(affine: np.ndarray) -> np.ndarray:
    """World coordinates of every voxel of a SHAPE grid."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), axis=-1)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


def phantom(points: np.ndarray):
    """Soft ellipsoid body with an off-centre inner organ; labels 0/1/2."""
    body = ((points / np.array([22.0, 20.0, 45.0])) ** 2).sum(-1)
    organ = (((points - np.array([6.0, -4.0, 10.0])) / np.array([8.0, 7.0, 14.0])) ** 2).sum(-1)
    image = 1 / (1 + np.exp((body - 1) * 8)) + 0.8 / (1 + np.exp((organ - 1) * 6))
    labels = (body < 1).astype(np.int16) + ((organ < 1) & (body < 1))
    return image.astype(np.float32), labels.astype(np.int16)


def moving_points(points: np.ndarray) -> np.ndarray:
    """Fixed-space location of each moving-image point: scale, shift, bend."""
    shifted = (points - np.array([5.0, -4.0, 8.0])) / 1.12
    bend = 3.0 * np.sin(points[..., 2:3] / 15.0) * np.array([1.0, 0.0, 0.0])
    return shifted + bend


def registration_pair() -> dict:
    """The fixed image and its labels, the moving image (intensities x 500) and its labels."""
    fixed_affine = grid_affine([35.0, -30.0, -70.0])
    moving_affine = grid_affine([38.0, -33.0, -66.0])
    fixed_img, fixed_lab = phantom(world_points(fixed_affine))
    moving_img, moving_lab = phantom(moving_points(world_points(moving_affine)))
    return {
        "fixed": nib.Nifti1Image(fixed_img, fixed_affine),
        "moving": nib.Nifti1Image(moving_img * 500.0, moving_affine),
        "fixed_labels": fixed_lab,
        "moving_labels": nib.Nifti1Image(moving_lab, moving_affine),
    }
