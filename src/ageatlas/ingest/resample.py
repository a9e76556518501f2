"""1-D linear resampling from station voxels to grid voxels: `AxisMap` and its use.

Real stations are axis-aligned, and their in-plane spacing matches the grid's
to a few hundredths of a voxel across the field of view. So in-plane
resampling is an integer shift: station planes are read in place. Separable
linear interpolation is used when the spacings differ. Along z, each output
slice is a two-tap linear mix of station slices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Slack (mm, or voxels for index comparisons) for points on a boundary.
EPS = 1e-3
#: An in-plane map within this many voxels of an integer shift is copied, not
#: interpolated. Real stations (2.23214 mm) on the 2.232 mm grid are 0.01 off.
SNAP_VOXELS = 0.05


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


def resample_inplane(src: np.ndarray, ymap: AxisMap, xmap: AxisMap) -> np.ndarray:
    """(z, y, x) station slices resampled in-plane; one copy when both axes are shifts."""
    if ymap.shift() is not None and xmap.shift() is not None:
        out = np.zeros((src.shape[0], ymap.n_out, xmap.n_out), np.float32)
        y0, y1, ys = ymap.window()
        x0, x1, xs = xmap.window()
        out[:, y0:y1, x0:x1] = src[:, ys, xs]
        return out
    return np.ascontiguousarray(resample_axis(resample_axis(src, 1, ymap), 2, xmap))
