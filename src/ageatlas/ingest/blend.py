"""Blending stations across their overlaps: weights, and one contrast composed.

Weights fall to zero at each station's trimmed edge and are normalised per
voxel where stations share slices (stations differ in rows).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from ageatlas.ingest.grid import Grid
from ageatlas.ingest.resample import EPS

#: Steepness of the logistic blend across an overlap (t in [0, 1]).
LOGISTIC_STEEPNESS = 10.0


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


def runs(active: np.ndarray, flag: np.ndarray) -> Iterator[tuple[int, int, bool]]:
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


def compose(placed, contrast: str, gains, weights, shared, den_runs, grid: Grid) -> np.ndarray:
    """One contrast on the grid, (z, y, x): weighted sum, normalised where stations share slices."""
    nx, ny, nz = grid.shape
    out = np.zeros((nz, ny, nx), np.float32)
    for st, g, w in zip(placed, gains, weights):
        for k0, k1, is_shared in runs(w > 0, shared):
            coef = g * w[k0:k1]
            if is_shared:
                out[k0:k1] += st.render(contrast, k0, k1, coef)
            else:  # sole contributor, weight 1: write in place
                st.render(contrast, k0, k1, coef, out=out[k0:k1])
    for k0, k1, den in den_runs:
        np.divide(out[k0:k1], den, out=out[k0:k1], where=den > 0)
    return out
