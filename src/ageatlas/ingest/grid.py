"""The output voxel grid of the stitched volume: `Grid` and its affine.

The grid is canonical RAS (diagonal affine with positive spacing); the
stitcher centres it in-plane on the stations' mean centre, with its top slice
on the top station's first usable slice, extending inferiorly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """Output voxel grid: (x, y, z) = (left-right, posterior-anterior, inferior-superior)."""

    shape: tuple[int, int, int] = (224, 174, 370)
    spacing: tuple[float, float, float] = (2.232, 2.232, 3.0)


def grid_affine(grid: Grid, centre_xy: Sequence[float], top_z: float) -> np.ndarray:
    """Affine of `grid`: canonical RAS, in-plane centre at `centre_xy`, last slice at `top_z`."""
    shape, spacing = np.asarray(grid.shape), np.asarray(grid.spacing, float)
    origin = np.array(
        [
            centre_xy[0] - (shape[0] - 1) / 2 * spacing[0],
            centre_xy[1] - (shape[1] - 1) / 2 * spacing[1],
            top_z - (shape[2] - 1) * spacing[2],
        ]
    )
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return affine
