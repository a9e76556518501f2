"""ageatlas.ingest.grid: the output grid's affine."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from ageatlas.ingest.grid import Grid, grid_affine


def test_grid_affine_maps_voxel_centres_in_ras():
    grid = Grid(shape=(10, 8, 20), spacing=(2.0, 3.0, 4.0))
    affine = grid_affine(grid, centre_xy=(5.0, -7.0), top_z=100.0)
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    np.testing.assert_allclose(affine @ [4.5, 3.5, 19, 1], [5.0, -7.0, 100.0, 1])
    np.testing.assert_allclose(affine @ [0, 0, 0, 1], [5.0 - 9.0, -7.0 - 10.5, 100.0 - 76.0, 1])
    np.testing.assert_allclose(np.diag(affine)[:3], grid.spacing)
