"""Stitch the Dixon stations of a UK Biobank neck-to-knee scan onto one grid.

Steps, all in float32 with one output array per contrast allocated once:

1. Order the stations head to foot by the world z of their centres. Use each
   affine to find which station axis runs along z (the slice axis).
2. Trim ``trim_slices`` folded (wrap-around) slices at every station end that
   faces a neighbour. Give slices back where trimming would open a gap.
3. Place the output grid: canonical RAS (diagonal affine with positive
   spacing), centred in-plane on the stations' mean centre, with its top
   slice on the top station's first usable slice, extending inferiorly.
4. Map each station onto the grid. Real stations are axis-aligned, and their
   in-plane spacing matches the grid's to a few hundredths of a voxel across
   the field of view. So in-plane resampling is an integer shift: station
   planes are read in place. Separable linear interpolation is used when the
   spacings differ. Along z, each output slice is a two-tap linear mix of
   station slices. Oblique stations fall back to trilinear
   ``scipy.ndimage.map_coordinates``.
5. In each overlap: flag fat-water swaps by correlating W and F, and estimate
   gains from medians of W+F. Both fall back to the untrimmed end slices when
   coarse data leave no overlap after trimming. Then blend, with weights that
   fall to zero at each station's trimmed edge, normalised per voxel where
   stations share slices (stations differ in rows).
6. Optionally divide out a bias field estimated by N4 on the stitched W+F.

The work arrays are (z, y, x) C-ordered. The caller gets their transposes:
shape ``grid.shape`` = (x, y, z) and Fortran-contiguous, which is NIfTI's
on-disk order, so writing them needs no transpose.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .layout import DEFAULT_CONTRASTS
from .qc import ParticipantExcluded
from .volume import StationVolume

#: Slack (mm, or voxels for index comparisons) for points on a boundary.
EPS = 1e-3
#: An in-plane map within this many voxels of an integer shift is copied, not
#: interpolated. Real stations (2.23214 mm) on the 2.232 mm grid are 0.01 off.
SNAP_VOXELS = 0.05
#: Off-axis affine terms adding up to less than this (voxels across the
#: station) still count as axis-aligned.
ALIGN_TOL_VOXELS = 0.05
#: Steepness of the logistic blend across an overlap (t in [0, 1]).
LOGISTIC_STEEPNESS = 10.0
#: Tissue = W+F above this fraction of its 99th percentile in an overlap.
TISSUE_FRACTION = 0.1
#: Fewer tissue voxels than this in an overlap: no gain or swap estimate.
MIN_TISSUE_VOXELS = 50
#: A junction counts as W/F-disagreeing only when cross-contrast correlation beats
#: same-contrast correlation by this much (the scores of real swaps are near 2 or more).
GAIN_WARN = 2.5  # a station gain beyond this factor is a QC warning
SWAP_MARGIN = 0.2
#: Blend weight kept wherever a station has data. Where a neighbour also has
#: data the floor is negligible; where it does not (beyond a narrower station's
#: rows), the voxel is not left empty on this station's edge slice.
WEIGHT_FLOOR = 1e-6
#: In-plane subsampling of overlap statistics (robust, and 4x cheaper).
STAT_STRIDE = 2


@dataclass(frozen=True)
class Grid:
    """Output voxel grid: (x, y, z) = (left-right, posterior-anterior, inferior-superior)."""

    shape: tuple[int, int, int] = (224, 174, 370)
    spacing: tuple[float, float, float] = (2.232, 2.232, 3.0)


@dataclass(frozen=True)
class StitchOptions:
    """How to stitch; the defaults are what the workflow uses."""

    trim_slices: int = 2  # folded end slices dropped at each station end facing a neighbour
    blend: str = "linear"  # overlap weights: "linear" fade (Langner) or "logistic" (recoh)
    harmonise: bool = True  # match station gains in the overlaps
    fix_swaps: bool = True  # swap F/W back in a station flagged as fat-water swapped
    n4: bool = False  # N4 bias correction (SimpleITK) on the stitched W+F
    contrasts: tuple[str, ...] = DEFAULT_CONTRASTS


@dataclass
class StitchResult:
    """Stitched contrasts on one grid, plus what QC should know about them."""

    images: dict[str, np.ndarray]  # contrast -> float32 (x, y, z) array of grid.shape
    affine: np.ndarray  # 4x4 RAS+ affine of the output grid
    notes: list[str] = field(default_factory=list)  # data problems: QC warnings
    info: list[str] = field(default_factory=list)  # routine facts: the job log only
    swapped_stations: list[int] = field(default_factory=list)  # StationVolume.index values


# --------------------------------------------------------------------------- grid


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


# ------------------------------------------------------------------ 1-D resampling


@dataclass(frozen=True)
class AxisMap:
    """Linear map from output index n to fractional input index ``scale * n + offset``."""

    scale: float
    offset: float
    n_in: int
    n_out: int

    def coords(self) -> np.ndarray:
        return self.offset + self.scale * np.arange(self.n_out)

    def shift(self) -> tuple[int, int] | None:
        """(step, start) with step = +-1 if the map is an integer shift within SNAP_VOXELS."""
        step = round(self.scale)
        if abs(step) != 1:
            return None
        start = round(self.offset)
        drift = abs(self.scale - step) * max(self.n_out - 1, 0)
        return (step, start) if abs(self.offset - start) + drift <= SNAP_VOXELS else None

    def window(self) -> tuple[int, int, slice]:
        """For a shift map: output range [lo, hi) and the input slice that fills it."""
        step, start = self.shift()
        if step == 1:
            lo, hi = max(0, -start), min(self.n_out, self.n_in - start)
        else:
            lo, hi = max(0, start - self.n_in + 1), min(self.n_out, start + 1)
        if hi <= lo:
            return 0, 0, slice(0, 0)
        first, last = start + step * lo, start + step * (hi - 1)
        if step == 1:
            return lo, hi, slice(first, last + 1)
        return lo, hi, slice(first, last - 1 if last > 0 else None, -1)

    def valid(self) -> np.ndarray:
        """Output indices that fall inside the input."""
        if self.shift() is not None:
            lo, hi, _ = self.window()
            mask = np.zeros(self.n_out, bool)
            mask[lo:hi] = True
            return mask
        c = self.coords()
        return (c >= -EPS) & (c <= self.n_in - 1 + EPS)

    def taps(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Linear interpolation taps: (i0, i1, weight of i1, valid) per output index."""
        c = self.coords()
        valid = (c >= -EPS) & (c <= self.n_in - 1 + EPS)
        c = np.clip(c, 0, self.n_in - 1)
        i0 = np.minimum(np.floor(c), max(self.n_in - 2, 0)).astype(np.intp)
        i1 = np.minimum(i0 + 1, self.n_in - 1)
        frac = np.where(valid & (i1 > i0), c - i0, 0.0).astype(np.float32)
        return i0, i1, frac, valid


def resample_axis(arr: np.ndarray, axis: int, amap: AxisMap) -> np.ndarray:
    """Linearly resample `arr` along one axis. Output points outside the input are 0."""
    shape = list(arr.shape)
    shape[axis] = amap.n_out
    if amap.shift() is not None:
        out = np.zeros(shape, np.float32)
        lo, hi, src = amap.window()
        dst = [slice(None)] * arr.ndim
        dst[axis], sel = slice(lo, hi), [slice(None)] * arr.ndim
        sel[axis] = src
        out[tuple(dst)] = arr[tuple(sel)]
        return out
    i0, i1, frac, valid = amap.taps()
    bshape = [1] * arr.ndim
    bshape[axis] = amap.n_out
    w1 = frac.reshape(bshape)
    w0 = np.where(valid, 1 - frac, 0).astype(np.float32).reshape(bshape)
    out = np.take(arr, i0, axis=axis).astype(np.float32, copy=False) * w0
    out += np.take(arr, i1, axis=axis) * w1
    return out


def _resample_inplane(src: np.ndarray, ymap: AxisMap, xmap: AxisMap) -> np.ndarray:
    """(z, y, x) station slices resampled in-plane; one copy when both axes are shifts."""
    if ymap.shift() is not None and xmap.shift() is not None:
        out = np.zeros((src.shape[0], ymap.n_out, xmap.n_out), np.float32)
        y0, y1, ys = ymap.window()
        x0, x1, xs = xmap.window()
        out[:, y0:y1, x0:x1] = src[:, ys, xs]
        return out
    return np.ascontiguousarray(resample_axis(resample_axis(src, 1, ymap), 2, xmap))


# ------------------------------------------------------------- station geometry


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


class _Geometry:
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


# --------------------------------------------------------------- placed stations


def _untrimmed(station, affine: np.ndarray, grid: Grid):
    """The same station placed again with all its slices."""
    geo = copy.copy(station.geo)
    geo.trim_sup = geo.trim_inf = 0
    return type(station)(geo, affine, grid)


def _stored_name(contrast: str, swapped: bool) -> str:
    """Which stored image holds `contrast` once a flagged W/F swap is undone."""
    return {"W": "F", "F": "W"}.get(contrast, contrast) if swapped else contrast


class _AlignedStation:
    """An axis-aligned station on the grid: in-plane copy or interpolation, 2-tap z."""

    def __init__(self, geo: _Geometry, affine: np.ndarray, grid: Grid):
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
                self._stacks[name] = (_resample_inplane(zyx, self.ymap, self.xmap), full, full)
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


class _ObliqueStation:
    """A station that is not axis-aligned with the grid: trilinear map_coordinates."""

    def __init__(self, geo: _Geometry, affine: np.ndarray, grid: Grid):
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


# -------------------------------------------------------------------- blending


def _ramp(t: np.ndarray, mode: str) -> np.ndarray:
    """0 at t=0, 1 at t=1, with ramp(t) + ramp(1-t) = 1 so that paired weights sum to one."""
    t = np.clip(t, 0.0, 1.0)
    if mode == "linear":
        return t
    s = 1 / (1 + np.exp(-LOGISTIC_STEEPNESS * (t - 0.5)))
    s0 = 1 / (1 + np.exp(LOGISTIC_STEEPNESS / 2))
    return (s - s0) / (1 - 2 * s0)


def blend_weights(
    z: np.ndarray, extents: Sequence[tuple[float, float]], mode: str = "linear"
) -> np.ndarray:
    """Blend weight of each station (rows, ordered head to foot) at each world z.

    A station's weight is 1 inside its usable extent. In the overlap with a neighbour
    it falls to 0 at its own edge. Columns are normalised to sum to one wherever any
    station covers z.
    """
    z = np.asarray(z, float)
    w = np.zeros((len(extents), z.size))
    for s, (lo, hi) in enumerate(extents):
        w[s] = (z >= lo - EPS) & (z <= hi + EPS)
        if s > 0 and extents[s - 1][0] < hi:  # overlap with the station above
            w[s] *= _ramp((hi - z) / (hi - extents[s - 1][0]), mode)
        if s + 1 < len(extents) and extents[s + 1][1] > lo:  # overlap with the one below
            w[s] *= _ramp((z - lo) / (extents[s + 1][1] - lo), mode)
    total = w.sum(axis=0)
    np.divide(w, total, out=w, where=total > 0)
    return w


def _runs(active: np.ndarray, flag: np.ndarray) -> Iterator[tuple[int, int, bool]]:
    """Maximal runs [k0, k1) of active slices with a constant flag."""
    k, n = 0, len(active)
    while k < n:
        if not active[k]:
            k += 1
            continue
        k1 = k + 1
        while k1 < n and active[k1] and flag[k1] == flag[k]:
            k1 += 1
        yield k, k1, bool(flag[k])
        k = k1


# ------------------------------------------------- overlaps: swaps and gains


@dataclass
class _Overlap:
    """Both neighbours sampled on the grid slices they share (in-plane subsampled)."""

    upper: dict[str, np.ndarray]
    lower: dict[str, np.ndarray]
    tissue: np.ndarray  # both valid and W+F above threshold in both


def _overlap(up, down, level: Sequence[str]) -> _Overlap | None:
    shared = np.flatnonzero(up.zvalid & down.zvalid)
    if shared.size == 0:
        return None
    k0, k1 = int(shared[0]), int(shared[-1]) + 1
    ones = np.ones(k1 - k0, np.float32)
    sub = (slice(None), slice(None, None, STAT_STRIDE), slice(None, None, STAT_STRIDE))
    upper = {c: up.render(c, k0, k1, ones)[sub] for c in level}
    lower = {c: down.render(c, k0, k1, ones)[sub] for c in level}
    both = (up.valid(k0, k1) & down.valid(k0, k1)) & np.ones((k1 - k0, 1, 1), bool)
    tissue = both[sub]
    for side in (upper, lower):
        if tissue.any():
            total = sum(side[c] for c in level)
            tissue &= total > TISSUE_FRACTION * np.percentile(total[tissue], 99)
    return _Overlap(upper, lower, tissue)


def _too_thin(ov: _Overlap | None) -> bool:
    return ov is None or int(ov.tissue.sum()) < MIN_TISSUE_VOXELS


def _junction_overlaps(placed, affine, grid: Grid, level, info: list[str]) -> list:
    """Overlap samples per junction, from untrimmed end slices where the trimmed overlap is too thin.

    Coarse data (e.g. 18 mm slices overlapping by one slice) keep almost nothing
    after trimming. The folded end slices are still good enough to compare levels
    and W/F, though not to blend.
    """
    overlaps = []
    for up, down in zip(placed, placed[1:]):
        ov = _overlap(up, down, level)
        if _too_thin(ov) and (up.geo.trim_inf or down.geo.trim_sup):
            wide = _overlap(_untrimmed(up, affine, grid), _untrimmed(down, affine, grid), level)
            if not _too_thin(wide):
                ov = wide
                info.append(
                    f"overlap of stations {up.geo.label} and {down.geo.label} measured on "
                    "untrimmed end slices (trimmed overlap too thin)"
                )
        overlaps.append(ov)
    return overlaps


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean(dtype=np.float64)
    b = b - b.mean(dtype=np.float64)
    den = np.sqrt(np.dot(a, a) * np.dot(b, b))
    return float(np.dot(a, b) / den) if den > 0 else 0.0


def swap_score(wa: np.ndarray, fa: np.ndarray, wb: np.ndarray, fb: np.ndarray) -> float:
    """Cross minus same-contrast correlation of two neighbours' voxels in their overlap.

    Clearly positive: one of the two has W and F swapped relative to the other.
    """
    wa, fa, wb, fb = (np.asarray(v, np.float64).ravel() for v in (wa, fa, wb, fb))
    return _corr(wa, fb) + _corr(fa, wb) - _corr(wa, wb) - _corr(fa, fb)


def attribute_swaps(
    disagree: Sequence[bool | None], fat_fraction: Sequence[float] | None = None
) -> list[int]:
    """Positions (head to foot) of swapped stations, from per-junction disagreement.

    A junction where neighbours disagree flips the W/F parity, so the stations of
    a chain split into two parity classes. The minority class is the swapped one.
    This covers an end station (one disagreeing junction) and a middle station
    (two). An undetermined junction (None) breaks the chain, and each segment is
    judged on its own. On a tie, the class with the higher mean fat fraction is
    taken as swapped, because tissue is mostly water-dominant. Without fat
    fractions a tie flags nothing.
    """
    flagged, start = [], 0
    for end in range(len(disagree) + 1):
        if end == len(disagree) or disagree[end] is None:
            flagged += _minority_class(disagree[start:end], start, fat_fraction)
            start = end + 1
    return flagged


def _minority_class(
    links: Sequence[bool], first: int, fat_fraction: Sequence[float] | None
) -> list[int]:
    parity = [False]
    for d in links:
        parity.append(parity[-1] ^ bool(d))
    odd = [first + i for i, p in enumerate(parity) if p]
    even = [first + i for i, p in enumerate(parity) if not p]
    if len(odd) != len(even):
        return min(odd, even, key=len)
    if not odd or fat_fraction is None:
        return []
    ff = np.asarray(fat_fraction, float)
    return odd if ff[odd].mean() > ff[even].mean() else even


def _fat_fraction(vol: StationVolume) -> float:
    """Median F/(W+F) over a station's tissue (coarsely subsampled)."""
    sub = (slice(None, None, 4), slice(None, None, 4), slice(None, None, 2))
    w = np.asarray(vol.images["W"][sub], np.float32)
    f = np.asarray(vol.images["F"][sub], np.float32)
    s = w + f
    tissue = s > TISSUE_FRACTION * np.percentile(s, 99)
    return float(np.median(f[tissue] / s[tissue])) if tissue.any() else 0.5


def gain_ratio(upper: np.ndarray, lower: np.ndarray) -> float | None:
    """Robust level ratio of two stations on the same tissue voxels: median(upper)/median(lower)."""
    if upper.size < MIN_TISSUE_VOXELS:
        return None
    mu, ml = float(np.median(upper)), float(np.median(lower))
    return mu / ml if mu > 0 and ml > 0 else None


def propagate_gains(ratios: Sequence[float | None], ref: int) -> np.ndarray:
    """Gain per station, 1 at `ref`, chaining junction ratios (None counts as 1).

    ratios[i] = level of station i / level of station i+1 in their overlap. Multiplying
    each station by its gain brings every overlap to the reference station's level.
    """
    gains = np.ones(len(ratios) + 1)
    for i in range(ref, len(ratios)):
        gains[i + 1] = gains[i] * (ratios[i] or 1.0)
    for i in range(ref - 1, -1, -1):
        gains[i] = gains[i + 1] / (ratios[i] or 1.0)
    return gains


# ------------------------------------------------------------------------- N4


def n4_bias_field(
    image_zyx: np.ndarray,
    spacing_xyz: Sequence[float],
    mask: np.ndarray | None = None,
    shrink: int = 4,
    iterations: Sequence[int] = (50, 50, 30),
) -> np.ndarray:
    """Multiplicative bias field (> 0, same shape) of a (z, y, x) image, by N4 (SimpleITK).

    Fitted on a shrunk copy for speed, evaluated at full resolution.
    """
    import SimpleITK as sitk

    image_zyx = np.asarray(image_zyx, np.float32)
    if mask is None:
        positive = image_zyx[image_zyx > 0]
        level = np.percentile(positive, 99) if positive.size else 0.0
        mask = image_zyx > TISSUE_FRACTION * level
    img = sitk.GetImageFromArray(image_zyx)
    img.SetSpacing(tuple(float(s) for s in spacing_xyz))
    msk = sitk.GetImageFromArray(mask.astype(np.uint8))
    msk.CopyInformation(img)
    # Shrink while keeping >= 32 voxels per axis so small grids are fitted as they are.
    factors = [max(1, min(shrink, n // 32)) for n in img.GetSize()]
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([int(i) for i in iterations])
    n4.Execute(sitk.Shrink(img, factors), sitk.Shrink(msk, factors))
    log_field = sitk.GetArrayFromImage(n4.GetLogBiasFieldAsImage(img))
    return np.exp(log_field).astype(np.float32)


# ------------------------------------------------------------------- stitching


def _check_inputs(stations: Sequence[StationVolume], contrasts: Sequence[str]) -> None:
    if not stations:
        raise ParticipantExcluded("no stations to stitch")
    for vol in stations:
        missing = [c for c in contrasts if c not in vol.images]
        if missing:
            raise ParticipantExcluded(f"station {vol.index} lacks contrast(s) {', '.join(missing)}")
        shapes = {np.shape(a) for a in vol.images.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) != 3:
            raise ParticipantExcluded(
                f"station {vol.index}: contrasts differ in shape {sorted(shapes)}"
            )


def _place_stations(
    geos: list[_Geometry], grid: Grid, trim: int, notes: list[str], info: list[str]
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


def _find_swaps(placed, overlaps, fix: bool, notes: list[str]) -> list[int]:
    disagree = []
    for up, down, ov in zip(placed, placed[1:], overlaps):
        if _too_thin(ov):
            notes.append(
                f"fat-water swap check skipped between stations {up.geo.label} and "
                f"{down.geo.label}: too little shared tissue"
            )
            disagree.append(None)
            continue
        t = ov.tissue
        score = swap_score(ov.upper["W"][t], ov.upper["F"][t], ov.lower["W"][t], ov.lower["F"][t])
        disagree.append(score > SWAP_MARGIN)
    if not any(d for d in disagree if d is not None):
        return []
    fat = [_fat_fraction(st.geo.vol) for st in placed]
    flagged = attribute_swaps(disagree, fat)
    if not flagged:
        notes.append("fat-water swap suspected but not attributable to a station")
    for pos in flagged:
        placed[pos].swapped = fix
        notes.append(
            f"station {placed[pos].geo.label}: fat-water swap suspected; "
            + ("W and F swapped back" if fix else "left as acquired")
        )
    return [placed[pos].geo.label for pos in flagged]


def _harmonise(
    placed, overlaps, level: Sequence[str], notes: list[str], info: list[str]
) -> np.ndarray:
    ratios = []
    for up, down, ov in zip(placed, placed[1:], overlaps):
        ratio = None
        if ov is not None:
            t = ov.tissue
            ratio = gain_ratio(
                sum(ov.upper[c][t] for c in level), sum(ov.lower[c][t] for c in level)
            )
        if ratio is None:
            notes.append(
                f"no gain estimate between stations {up.geo.label} and {down.geo.label}: "
                "too little shared tissue"
            )
        ratios.append(ratio)
    gains = propagate_gains(ratios, ref=(len(placed) - 1) // 2)
    info.append("station gains " + ", ".join(f"{st.geo.label}: {g:.2f}" for st, g in zip(placed, gains)))
    for st, g in zip(placed, gains):
        # Receiver gains differ by tens of percent between stations; beyond
        # GAIN_WARN the overlap statistics more likely mislead than the scanner.
        if not 1 / GAIN_WARN <= g <= GAIN_WARN:
            notes.append(f"station {st.geo.label} rescaled by {g:.2f} to match its neighbours")
    return gains


def _compose(placed, contrast: str, gains, weights, shared, den_runs, grid: Grid) -> np.ndarray:
    """One contrast on the grid, (z, y, x): weighted sum, normalised where stations share slices."""
    nx, ny, nz = grid.shape
    out = np.zeros((nz, ny, nx), np.float32)
    for st, g, w in zip(placed, gains, weights):
        for k0, k1, is_shared in _runs(w > 0, shared):
            coef = g * w[k0:k1]
            if is_shared:
                out[k0:k1] += st.render(contrast, k0, k1, coef)
            else:  # sole contributor, weight 1: write in place
                st.render(contrast, k0, k1, coef, out=out[k0:k1])
    for k0, k1, den in den_runs:
        np.divide(out[k0:k1], den, out=out[k0:k1], where=den > 0)
    return out


def stitch(
    stations: list[StationVolume],
    grid: Grid = Grid(),
    options: StitchOptions = StitchOptions(),
) -> StitchResult:
    """Stitch a participant's stations onto `grid` (see the module docstring)."""
    if options.blend not in ("linear", "logistic"):
        raise ValueError(f"unknown blend {options.blend!r}: use 'linear' or 'logistic'")
    _check_inputs(stations, options.contrasts)
    notes: list[str] = []
    info: list[str] = []
    has_wf = all("W" in v.images and "F" in v.images for v in stations)
    if options.n4 and not has_wf:
        raise ParticipantExcluded("N4 needs W and F in every station")

    geos = sorted((_Geometry(v) for v in stations), key=lambda g: -g.centre[2])
    affine = _place_stations(geos, grid, options.trim_slices, notes, info)
    placed = []
    for g in geos:
        if g.perm is None:
            info.append(f"station {g.label} is oblique: resampled with map_coordinates")
            placed.append(_ObliqueStation(g, affine, grid))
        else:
            placed.append(_AlignedStation(g, affine, grid))

    z = affine[2, 3] + grid.spacing[2] * np.arange(grid.shape[2])
    zvalid = np.array([st.zvalid for st in placed])
    weights = blend_weights(z, [g.extent() for g in geos], options.blend)
    weights = np.maximum(weights * zvalid, WEIGHT_FLOOR * zvalid)
    total = weights.sum(axis=0)
    np.divide(weights, total, out=weights, where=total > 0)

    level = ("W", "F") if has_wf else tuple(options.contrasts)
    overlaps = _junction_overlaps(placed, affine, grid, level, info)
    swapped = _find_swaps(placed, overlaps, options.fix_swaps, notes) if has_wf else []
    gains = (
        _harmonise(placed, overlaps, level, notes, info) if options.harmonise else np.ones(len(placed))
    )

    # Slices fed by several stations (or any oblique one) are normalised by their
    # per-voxel weight sum, which also covers stations narrower than the grid.
    oblique = np.array([isinstance(st, _ObliqueStation) for st in placed])
    shared = ((weights > 0).sum(axis=0) > 1) | (weights[oblique] > 0).any(axis=0)
    den_runs = []
    for k0, k1, _ in _runs(shared, np.ones_like(shared)):
        den = np.zeros((k1 - k0, grid.shape[1], grid.shape[0]), np.float32)
        for st, w in zip(placed, weights):
            if w[k0:k1].any():
                den += w[k0:k1, None, None].astype(np.float32) * st.valid(k0, k1)
        den_runs.append((k0, k1, den))

    wanted = list(dict.fromkeys([*options.contrasts, *(("W", "F") if options.n4 else ())]))
    stitched = {}
    for c in wanted:
        stitched[c] = _compose(placed, c, gains, weights, shared, den_runs, grid)
    for st in placed:
        st.release()

    if options.n4:
        bias = n4_bias_field(stitched["W"] + stitched["F"], grid.spacing)
        for c in options.contrasts:
            stitched[c] /= bias
        info.append("N4 bias field (from stitched W+F) divided out of every contrast")

    return StitchResult(
        images={c: stitched[c].T for c in options.contrasts},
        affine=affine,
        notes=notes,
        info=info,
        swapped_stations=swapped,
    )
