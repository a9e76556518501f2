"""ageatlas.ingest.blend: weights across overlaps, and stations of different widths."""

from __future__ import annotations

import numpy as np
import pytest
from station_helpers import LINEAR, grid_world, make_station

from ageatlas.ingest.blend import blend_weights
from ageatlas.ingest.grid import Grid
from ageatlas.ingest.stitch import stitch


@pytest.mark.parametrize("mode", ["linear", "logistic"])
def test_blend_weights_sum_to_one_and_fade_to_zero_at_trimmed_edges(mode):
    extents = [(-110.0, 0.0), (-190.0, -80.0), (-280.0, -160.0)]
    z = np.linspace(-300, 20, 641)  # 0.5 mm steps, hits every edge
    w = blend_weights(z, extents, mode)
    covered = (z >= -280) & (z <= 0)
    np.testing.assert_allclose(w.sum(axis=0)[covered], 1.0, atol=1e-12)
    assert (w[:, ~covered] == 0).all()
    at = lambda v: int(np.argmin(np.abs(z - v)))  # noqa: E731
    assert w[0, at(-110)] == 0 and w[1, at(-80)] == 0  # each station's inner edge
    assert w[1, at(-190)] == 0 and w[2, at(-160)] == 0
    assert w[0, at(0)] == 1 and w[2, at(-280)] == 1  # outer ends keep full weight
    assert w[1, at(-135)] == 1  # between the overlaps
    overlap = (z > -110) & (z < -80)
    assert (np.diff(w[0, overlap]) > 0).all()  # monotone fade


def test_station_narrower_than_grid_does_not_fade_the_overlap():
    # Like the 156-row knee station under a 174-row grid: where only the wider
    # station has data, the overlap must show it at full weight.
    stations = [
        make_station(1, LINEAR, (32, 24, 12), (8, 8, 10), 0.0),
        make_station(2, LINEAR, (32, 16, 12), (8, 8, 10), -60.0),
    ]
    grid = Grid(shape=(30, 22, 29), spacing=(8.0, 8.0, 6.0))
    result = stitch(stations, grid)
    x, y, z = grid_world(result)
    upper = z >= -90  # the upper station's slices after trimming (overlap: -90..-80)
    np.testing.assert_allclose(result.images["W"][upper], LINEAR["W"](x, y, z)[upper], atol=0.02)
    narrow = np.abs(y) > 7.5 * 8 + 1e-6  # outside the lower station's rows
    assert (result.images["W"][narrow & (z < -90)] == 0).all()
    assert (result.images["W"][~narrow] > 0).all()
