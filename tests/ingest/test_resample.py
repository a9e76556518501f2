"""ageatlas.ingest.resample: 1-D maps from grid to station voxels."""

from __future__ import annotations

import numpy as np

from ageatlas.ingest.resample import AxisMap, resample_axis


def test_axis_map_shift_window_and_interpolation():
    data = np.arange(10, dtype=np.float32)[None, :] * np.ones((2, 1), np.float32)
    # Reversed integer shift: output n reads input 7 - n.
    flipped = AxisMap(scale=-1.0, offset=7.0, n_in=10, n_out=10)
    assert flipped.shift() == (-1, 7)
    out = resample_axis(data, 1, flipped)
    np.testing.assert_array_equal(out[0], [7, 6, 5, 4, 3, 2, 1, 0, 0, 0])
    # Half-voxel, 0.75-spacing map: linear interpolation, zero outside.
    frac = AxisMap(scale=0.75, offset=-0.5, n_in=10, n_out=16)
    assert frac.shift() is None
    out = resample_axis(data, 1, frac)
    c = -0.5 + 0.75 * np.arange(16)
    inside = (c >= 0) & (c <= 9)
    np.testing.assert_allclose(out[1][inside], c[inside], atol=1e-5)
    assert (out[1][~inside] == 0).all()
    i0, i1, w1, valid = frac.taps()
    assert (
        ((w1 >= 0) & (w1 <= 1)).all()
        and (i0[valid] <= c[valid]).all()
        and (c[valid] <= i1[valid]).all()
    )
    # Real UKBB in-plane spacing on the 2.232 mm grid snaps to a copy.
    assert AxisMap(scale=2.232 / 2.2321429, offset=0.0, n_in=224, n_out=224).shift() == (1, 0)
