"""ageatlas.ingest.placement: trimming the stations and covering the grid."""

from __future__ import annotations

import numpy as np
from station_helpers import GRID, LINEAR, four_stations, grid_world, make_station

from ageatlas.ingest.grid import Grid
from ageatlas.ingest.placement import plan_trims
from ageatlas.ingest.stitch import StitchOptions, stitch


def test_folded_end_slices_are_trimmed_at_inner_ends_only():
    stations = four_stations(LINEAR)
    for pos, vol in enumerate(stations):
        geo_axis = int(np.argmax(np.abs(vol.affine[2, :3])))
        for c in vol.images:
            img = np.moveaxis(vol.images[c], geo_axis, -1)  # view: slices last
            sup_first = vol.affine[2, geo_axis] < 0  # index 0 is the superior end
            sup, inf = (img[..., :2], img[..., -2:]) if sup_first else (img[..., -2:], img[..., :2])
            if pos > 0:
                sup[...] = 1e6
            if pos < len(stations) - 1:
                inf[...] = 1e6
    trimmed = stitch(stations, GRID)
    assert trimmed.images["W"].max() < 2000
    assert not any("trim" in n for n in trimmed.info)
    untrimmed = stitch(stations, GRID, StitchOptions(trim_slices=0))
    assert untrimmed.images["W"].max() > 1e5


def test_plan_trims_gives_back_slices_rather_than_open_a_gap():
    extents = [(-110.0, 0.0), (-188.0, -100.0)]  # 10 mm overlap
    assert plan_trims(extents, [10.0, -12.0], [12, 8], 2) == [(0, 0), (0, 0)]
    extents = [(-110.0, 0.0), (-188.0, -80.0)]  # 30 mm overlap
    assert plan_trims(extents, [10.0, 12.0], [12, 10], 2) == [(0, 1), (1, 0)]
    extents = [(-110.0, 0.0), (-188.0, -60.0)]  # 50 mm overlap
    assert plan_trims(extents, [10.0, 12.0], [12, 12], 2) == [(0, 2), (2, 0)]


def test_reduced_trim_is_noted_and_leaves_no_zero_slices():
    stations = [
        make_station(1, LINEAR, (32, 24, 12), (8, 8, 10), 0.0),
        make_station(2, LINEAR, (32, 24, 10), (8, 8, 12), -100.0),
    ]
    grid = Grid(shape=(30, 22, 31), spacing=(8.0, 8.0, 6.0))
    result = stitch(stations, grid)
    assert any("trim reduced to 0/0 slices between stations 1 and 2" in n for n in result.info)
    assert (result.images["W"].reshape(-1, 31) != 0).all(axis=0).all()


def test_coverage_notes_short_gap_and_cut():
    short = stitch(four_stations(LINEAR), Grid(GRID.shape[:2] + (60,), GRID.spacing))
    # Stations reach -300 mm; a 60-slice grid from 0 reaches -354 mm: 54 mm, 9 slices empty.
    assert any("coverage short" in n and "54.0 mm" in n and "9 slices" in n for n in short.notes)
    w = short.images["W"]
    assert (w[..., :9] == 0).all() and (w[..., 9] > 0).all()

    cut = stitch(four_stations(LINEAR), GRID)  # 50 slices reach -294 mm
    assert any("grid cuts 6.0 mm" in n and "station 4" in n for n in cut.info)

    gapped = [
        make_station(1, LINEAR, (32, 24, 12), (8, 8, 10), 0.0),
        make_station(2, LINEAR, (32, 24, 10), (8, 8, 12), -130.0),
    ]
    result = stitch(gapped, Grid(GRID.shape[:2] + (40,), GRID.spacing))
    assert any("gap of 20.0 mm between stations 1 and 2" in n for n in result.notes)
    x, y, z = grid_world(result)
    hole = (z[0, 0] > -130) & (z[0, 0] < -110)
    assert (result.images["W"][..., hole] == 0).all()
