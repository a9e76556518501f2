"""Small StationVolumes built directly from world functions, for the stitcher's tests."""

from __future__ import annotations

import numpy as np

from ageatlas.ingest.grid import Grid
from ageatlas.ingest.volume import StationVolume

# Four stations, head to foot, 38-50 mm overlaps (wider than the 2 + 2 trimmed
# slices). Real stations scaled down in matrix size, with the same kinds of
# variation: slice spacing, rows, flips. Stations reach z = -300 mm.
GRID = Grid(shape=(30, 22, 50), spacing=(8.0, 8.0, 6.0))
TOPS = (0.0, -60.0, -120.0, -190.0)
BOTTOMS = (-110.0, -168.0, -237.0, -300.0)


def station_affine(shape, spacing, top_z, flips=(), perm=(0, 1, 2), rot_z=0.0, tilt_x=0.0):
    """RAS affine of a station centred in-plane at 0 with its top slice centre at top_z.

    Built on a canonical (x, y, z) grid, then flipped along `flips`, rotated about
    its centre, and stored with array axis q = canonical axis perm[q].
    Returns (affine, stored shape).
    """
    shape, spacing = np.asarray(shape), np.asarray(spacing, float)
    a = np.diag([*spacing, 1.0])
    a[:3, 3] = [
        -(shape[0] - 1) / 2 * spacing[0],
        -(shape[1] - 1) / 2 * spacing[1],
        top_z - (shape[2] - 1) * spacing[2],
    ]
    for d in flips:
        a[:3, 3] += a[:3, d] * (shape[d] - 1)
        a[:3, d] *= -1
    centre = a @ np.append((shape - 1) / 2, 1)
    cz, sz = np.cos(np.radians(rot_z)), np.sin(np.radians(rot_z))
    cx, sx = np.cos(np.radians(tilt_x)), np.sin(np.radians(tilt_x))
    rot = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]) @ np.array(
        [[1, 0, 0], [0, cx, -sx], [0, sx, cx]]
    )
    move = np.eye(4)
    move[:3, :3] = rot
    move[:3, 3] = centre[:3] - rot @ centre[:3]
    a = move @ a
    return a[:, [*perm, 3]], tuple(int(shape[p]) for p in perm)


def world_of(affine, shape):
    ijk = np.indices(shape, dtype=float)
    return [sum(affine[d, q] * ijk[q] for q in range(3)) + affine[d, 3] for d in range(3)]


def make_station(index, fns, shape, spacing, top_z, gain=1.0, order="F", **geometry):
    """Station sampling world functions; Fortran order like the zip reader's arrays."""
    affine, stored = station_affine(shape, spacing, top_z, **geometry)
    x, y, z = world_of(affine, stored)
    images = {c: np.array(gain * fn(x, y, z), np.float32, order=order) for c, fn in fns.items()}
    return StationVolume(index=index, images=images, affine=affine)


def grid_world(result):
    return world_of(result.affine, result.images["W"].shape)


LINEAR = {
    "W": lambda x, y, z: 1000 + 0.7 * x + 0.4 * y + 0.3 * z,
    "F": lambda x, y, z: 500 - 0.2 * x + 0.5 * y + 0.1 * z,
}


def four_stations(fns, gains=(1, 1, 1, 1), oblique=False):
    """In-place shift path, interpolated + flipped + permuted, LPS-flipped (or oblique),
    C-ordered (copied planes)."""
    third = (
        dict(shape=(40, 30, 14), spacing=(8, 8, 9), rot_z=8.0, tilt_x=2.0)
        if oblique
        else dict(shape=(32, 24, 14), spacing=(8, 8, 9), flips=(0, 1, 2))
    )
    return [
        make_station(1, fns, (32, 24, 12), (8, 8, 10), TOPS[0], gains[0]),
        make_station(
            2, fns, (36, 28, 10), (7, 7, 12), TOPS[1], gains[1], flips=(0, 2), perm=(2, 0, 1)
        ),
        make_station(3, fns, top_z=TOPS[2], gain=gains[2], **third),
        make_station(4, fns, (32, 24, 12), (8, 8, 10), TOPS[3], gains[3], order="C"),
    ]
