"""Stations placed on the grid: their geometry, trims, and sampling onto grid slices.

1. Stations are ordered head to foot by the world z of their centres; each
   affine says which station axis runs along z (the slice axis).
2. ``trim_slices`` folded (wrap-around) slices are trimmed at every station
   end that faces a neighbour; slices are given back where trimming would
   open a gap.
3. The grid is placed (see `grid`), and each station mapped onto it:
   axis-aligned ones by shifts or separable interpolation in-plane and two
   taps along z (see `resample`), oblique ones by trilinear
   ``scipy.ndimage.map_coordinates``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ageatlas.ingest.grid import Grid, grid_affine
from ageatlas.ingest.resample import EPS, AxisMap, resample_inplane
from ageatlas.ingest.volume import StationVolume

#: Off-axis affine terms adding up to less than this (voxels across the
#: station) still count as axis-aligned.
ALIGN_TOL_VOXELS = 0.05


def axis_permutation(affine: np.ndarray, shape: Sequence[int]) -> tuple[int, int, int] | None:
    """Station axis lying along world x, y and z, or None if the station is oblique."""
    a = np.asarray(affine, float)[:3, :3]
    spacing = np.linalg.norm(a, axis=0)
    perm = [-1, -1, -1]
    for p in range(3):
        d = int(np.argmax(np.abs(a[:, p])))
        off_axis = np.abs(a[:, p]).sum() - abs(a[d, p])
        if off_axis * max(shape[p] - 1, 1) > ALIGN_TOL_VOXELS * spacing[p] or perm[d] != -1:
            return None
        perm[d] = p
    return tuple(perm)


class Geometry:
    """Where a station lies along z and which of its slices are usable."""

    def __init__(self, vol: StationVolume):
        self.vol = vol
        a = np.asarray(vol.affine, float)
        shape = np.asarray(vol.shape)
        self.perm = axis_permutation(a, vol.shape)
        if self.perm is not None:
            self.slice_axis = self.perm[2]
        else:
            self.slice_axis = int(np.argmax(np.abs(a[2, :3]) / np.linalg.norm(a[:3, :3], axis=0)))
        self.centre = (a @ np.append((shape - 1) / 2, 1.0))[:3]
        self.n_slices = int(shape[self.slice_axis])
        self.z_step = float(a[2, self.slice_axis])  # world z per slice (signed)
        self.z_first = self.centre[2] - self.z_step * (self.n_slices - 1) / 2
        self.trim_sup = self.trim_inf = 0

    @property
    def label(self) -> int:
        return self.vol.index

    def extent(self, trimmed: bool = True) -> tuple[float, float]:
        """(inferior, superior) world z of the end slice centres."""
        lo, hi = self.usable if trimmed else (0, self.n_slices - 1)
        z = (self.z_first + self.z_step * lo, self.z_first + self.z_step * hi)
        return min(z), max(z)

    @property
    def usable(self) -> tuple[int, int]:
        """First and last usable slice index (inclusive) along the slice axis."""
        if self.z_step >= 0:  # high indices are superior
            return self.trim_inf, self.n_slices - 1 - self.trim_sup
        return self.trim_sup, self.n_slices - 1 - self.trim_inf


def plan_trims(
    extents: Sequence[tuple[float, float]],
    steps: Sequence[float],
    counts: Sequence[int],
    trim: int,
) -> list[tuple[int, int]]:
    """(superior, inferior) slices to trim per station, stations ordered head to foot.

    Only ends facing a neighbour are trimmed. A station keeps at least two slices,
    and a junction's trims are given back one by one, from the larger side, while
    they would open a gap between the neighbours' usable slices.
    """
    n = len(extents)
    sup = [0] + [trim] * (n - 1)
    inf = [trim] * (n - 1) + [0]
    for s in range(n):
        while sup[s] + inf[s] > max(counts[s] - 2, 0):
            if sup[s] >= inf[s]:
                sup[s] -= 1
            else:
                inf[s] -= 1
    for a in range(n - 1):
        b = a + 1
        while (inf[a] or sup[b]) and (
            extents[a][0] + inf[a] * abs(steps[a]) > extents[b][1] - sup[b] * abs(steps[b]) + EPS
        ):
            if inf[a] >= sup[b]:
                inf[a] -= 1
            else:
                sup[b] -= 1
    return list(zip(sup, inf))


def untrimmed(station, affine: np.ndarray, grid: Grid):
    """The same station placed again with all its slices."""
    geo = copy.copy(station.geo)
    geo.trim_sup = geo.trim_inf = 0
    return type(station)(geo, affine, grid)


def _stored_name(contrast: str, swapped: bool) -> str:
    """Which stored image holds `contrast` once a flagged W/F swap is undone."""
    return {"W": "F", "F": "W"}.get(contrast, contrast) if swapped else contrast


class AlignedStation:
    """An axis-aligned station on the grid: in-plane copy or interpolation, 2-tap z."""

    def __init__(self, geo: Geometry, affine: np.ndarray, grid: Grid):
        self.geo = geo
        a = np.asarray(geo.vol.affine, float)
        shape = geo.vol.shape
        centre_idx = (np.asarray(shape) - 1) / 2
        u_lo, u_hi = geo.usable
        maps = []
        for d in range(3):
            p = geo.perm[d]
            # Tolerated off-axis terms are folded in at the station centre.
            offset_mm = a[d, 3] + sum(a[d, q] * centre_idx[q] for q in range(3) if q != p)
            first, n_in = (u_lo, u_hi - u_lo + 1) if d == 2 else (0, shape[p])
            maps.append(
                AxisMap(
                    scale=grid.spacing[d] / a[d, p],
                    offset=(affine[d, 3] - offset_mm) / a[d, p] - first,
                    n_in=n_in,
                    n_out=grid.shape[d],
                )
            )
        self.xmap, self.ymap, zmap = maps
        self.i0, self.i1, self.frac, self.zvalid = zmap.taps()
        self._valid = self.ymap.valid()[:, None] & self.xmap.valid()[None, :]
        self._stacks: dict[str, tuple] = {}
        self.swapped = False

    def _stack(self, contrast: str) -> tuple[np.ndarray, tuple[slice, slice], tuple[slice, slice]]:
        """Usable slices (z, y, x), the window of each plane to read, and where it goes.

        When the in-plane maps are shifts and the station's slices are contiguous
        planes (what the zip reader gives), planes are read in place. Copying them
        would cost more in fresh memory than the arithmetic.
        """
        name = _stored_name(contrast, self.swapped)
        if name not in self._stacks:
            perm, (u_lo, u_hi) = self.geo.perm, self.geo.usable
            zyx = self.geo.vol.images[name].transpose(perm[2], perm[1], perm[0])[u_lo : u_hi + 1]
            strides = np.abs(zyx.strides)
            planar = strides[2] == zyx.itemsize and strides[0] >= strides[1] >= strides[2]
            if planar and self.ymap.shift() is not None and self.xmap.shift() is not None:
                (y0, y1, ys), (x0, x1, xs) = self.ymap.window(), self.xmap.window()
                self._stacks[name] = (zyx, (ys, xs), (slice(y0, y1), slice(x0, x1)))
            else:
                full = (slice(None), slice(None))
                self._stacks[name] = (resample_inplane(zyx, self.ymap, self.xmap), full, full)
        return self._stacks[name]

    def release(self) -> None:
        self._stacks.clear()

    def valid(self, k0: int, k1: int) -> np.ndarray:
        return self._valid

    def render(
        self, contrast: str, k0: int, k1: int, coef: np.ndarray, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Output slices k0..k1-1 of a contrast, each scaled by its `coef`.

        Only the station's in-plane window is written: a given `out` must be zero
        elsewhere.
        """
        stack, src, dst = self._stack(contrast)
        if out is None:
            out = np.zeros((k1 - k0, self.ymap.n_out, self.xmap.n_out), np.float32)
        tmp = np.empty_like(out[0][dst])
        for j, k in enumerate(range(k0, k1)):
            c = float(coef[j]) if self.zvalid[k] else 0.0
            w1 = c * float(self.frac[k])
            plane = out[j][dst]
            np.multiply(stack[self.i0[k]][src], c - w1, out=plane)
            if w1:
                np.multiply(stack[self.i1[k]][src], w1, out=tmp)
                plane += tmp
        return out


class ObliqueStation:
    """A station that is not axis-aligned with the grid: trilinear map_coordinates."""

    def __init__(self, geo: Geometry, affine: np.ndarray, grid: Grid):
        self.geo = geo
        self.affine, self.grid = affine, grid
        self.inv = np.linalg.inv(np.asarray(geo.vol.affine, float))
        lo, hi = geo.extent()
        z = affine[2, 3] + grid.spacing[2] * np.arange(grid.shape[2])
        self.zvalid = (z >= lo - EPS) & (z <= hi + EPS)
        self.swapped = False

    def _coords(self, k0: int, k1: int) -> tuple[np.ndarray, np.ndarray]:
        nx, ny, _ = self.grid.shape
        k, j, i = np.meshgrid(np.arange(k0, k1), np.arange(ny), np.arange(nx), indexing="ij")
        world = [self.affine[d, d] * idx + self.affine[d, 3] for d, idx in enumerate((i, j, k))]
        vox = np.stack(
            [sum(self.inv[p, d] * world[d] for d in range(3)) + self.inv[p, 3] for p in range(3)]
        )
        u_lo, u_hi = self.geo.usable
        vox[self.geo.slice_axis] -= u_lo
        limits = list(self.geo.vol.shape)
        limits[self.geo.slice_axis] = u_hi - u_lo + 1
        valid = np.ones(vox.shape[1:], bool)
        for p in range(3):
            valid &= (vox[p] >= -EPS) & (vox[p] <= limits[p] - 1 + EPS)
        return vox, valid

    def valid(self, k0: int, k1: int) -> np.ndarray:
        return self._coords(k0, k1)[1]

    def release(self) -> None:
        pass

    def render(
        self, contrast: str, k0: int, k1: int, coef: np.ndarray, out: np.ndarray | None = None
    ) -> np.ndarray:
        name = _stored_name(contrast, self.swapped)
        u_lo, u_hi = self.geo.usable
        sel = [slice(None)] * 3
        sel[self.geo.slice_axis] = slice(u_lo, u_hi + 1)
        src = np.asarray(self.geo.vol.images[name][tuple(sel)], np.float32)
        vox, valid = self._coords(k0, k1)
        data = ndimage.map_coordinates(src, vox, order=1, mode="nearest", output=np.float32)
        data *= valid
        data *= (np.asarray(coef, np.float32) * self.zvalid[k0:k1])[:, None, None]
        if out is None:
            return data
        out[...] = data
        return out


def place_stations(
    geos: list[Geometry], grid: Grid, trim: int, notes: list[str], info: list[str]
) -> np.ndarray:
    """Trim the stations and return the grid affine; note reduced trims, gaps and coverage."""
    trims = plan_trims(
        [g.extent(trimmed=False) for g in geos],
        [g.z_step for g in geos],
        [g.n_slices for g in geos],
        trim,
    )
    for g, (sup, inf) in zip(geos, trims):
        g.trim_sup, g.trim_inf = sup, inf
    for a, b in zip(geos, geos[1:]):
        if trim and min(a.trim_inf, b.trim_sup) < trim:
            info.append(
                f"trim reduced to {a.trim_inf}/{b.trim_sup} slices between stations "
                f"{a.label} and {b.label} to avoid a gap"
            )
        gap = a.extent()[0] - b.extent()[1]
        if gap > EPS:
            notes.append(
                f"gap of {gap:.1f} mm between stations {a.label} and {b.label}: zero-filled"
            )
    centre = np.mean([g.centre[:2] for g in geos], axis=0)
    affine = grid_affine(grid, centre, geos[0].extent()[1])
    z0 = affine[2, 3]
    bottom = min(g.extent()[0] for g in geos)
    if bottom > z0 + EPS:
        z = z0 + grid.spacing[2] * np.arange(grid.shape[2])
        # Less than one grid slice short is rounding, not missing anatomy.
        (notes if bottom - z0 > grid.spacing[2] else info).append(
            f"coverage short: stations end {bottom - z0:.1f} mm above the grid's inferior end "
            f"({int((z < bottom - EPS).sum())} slices zero)"
        )
    elif bottom < z0 - EPS:
        cut = [str(g.label) for g in geos if g.extent()[0] < z0 - EPS]
        info.append(
            f"grid cuts {z0 - bottom:.1f} mm of data at the inferior end (station {', '.join(cut)})"
        )
    return affine
