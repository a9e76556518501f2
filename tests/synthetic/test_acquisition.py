"""Station grids keep the real geometry; images are consistent Dixon with ghost and noise."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from synthetic_helpers import SCALE, SEED, lps_axes, read_zip, slab, station_series, volume, write

from ageatlas.core import field20201 as layout
from ageatlas.synthetic.acquisition import station_grids
from ageatlas.synthetic.phantom import region_labels


def test_station_geometry_and_scale_keep_the_field_of_view(clean):
    for spec in layout.STATIONS:
        group = station_series(clean, spec.index)
        w = group["W"]
        assert {len(s) for s in group.values()} == {max(1, round(spec.slices * SCALE))}
        assert all(
            [s_.ImagePositionPatient for s_ in s] == [d.ImagePositionPatient for d in w]
            for s in group.values()
        )
        d = w[0]
        assert (d.Columns, d.Rows) == (
            max(1, round(spec.columns * SCALE)),
            max(1, round(spec.rows * SCALE)),
        )
        dy, dx = map(float, d.PixelSpacing)
        assert dx * d.Columns == pytest.approx(spec.columns * layout.PIXEL_SPACING_MM, abs=1e-3)
        assert dy * d.Rows == pytest.approx(spec.rows * layout.PIXEL_SPACING_MM, abs=1e-3)
        dz = float(d.SpacingBetweenSlices)
        assert float(d.SliceThickness) == dz
        assert dz * len(w) == pytest.approx(spec.slices * spec.slice_spacing_mm, abs=1e-3)
        x0, y0, _ = map(float, d.ImagePositionPatient)  # centred in-plane like the real data
        assert x0 == pytest.approx(-dx * d.Columns / 2, abs=1e-3)
        assert y0 == pytest.approx(-dy * d.Rows / 2, abs=1e-3)
        z = np.array([float(s.ImagePositionPatient[2]) for s in w])
        assert np.allclose(np.diff(z), -dz, atol=1e-3)
        assert [float(s.SliceLocation) for s in w] == pytest.approx(z.tolist())
        assert [int(s.InstanceNumber) for s in w] == list(range(1, len(w) + 1))
    # Slab edges do not depend on scale: they match the full-resolution grids.
    for grid in station_grids(1.0):
        bottom, top = slab(station_series(clean, grid.spec.index)["W"])
        assert top == pytest.approx(grid.z_top + grid.dz / 2, abs=1e-3)
        assert bottom == pytest.approx(grid.z[-1] - grid.dz / 2, abs=1e-3)


def test_stations_run_head_to_foot_and_overlap(clean):
    slabs = [slab(station_series(clean, k)["W"]) for k in range(1, 7)]
    tops = [t for _, t in slabs]
    assert tops == sorted(tops, reverse=True)  # station 1 is the most superior
    for (bottom, _), (_, next_top) in zip(slabs[:-1], slabs[1:]):
        assert 30 <= next_top - bottom <= 45
    coverage = slabs[0][1] - slabs[-1][0]
    assert 1100 <= coverage <= 1150
    times = [min(float(d.SeriesTime) for d in station_series(clean, k)["in"]) for k in range(1, 7)]
    assert times == sorted(times) and len(set(times)) == 6


def test_full_resolution_grid_matches_the_real_example():
    grids = station_grids(1.0)
    g1 = grids[0]
    assert (g1.columns, g1.rows, g1.slices) == (224, 168, 64)
    assert g1.x[0] == pytest.approx(-250.00000762939)
    assert g1.y[0] == pytest.approx(-187.50000572205)
    assert -79.5 in g1.z.tolist()
    centre_span = grids[0].z[0] - grids[-1].z[-1]
    assert centre_span <= 369 * 3.0  # a 370 x 3.0 mm grid spans all slice centres
    assert all(g.dz == g.spec.slice_spacing_mm for g in grids)


def test_contrasts_are_consistent_dixon_images(clean):
    group = station_series(clean, 3)
    v = {c: volume(s) for c, s in group.items()}
    body = v["in"] > 400
    assert np.corrcoef(v["in"][body], (v["W"] + v["F"])[body])[0, 1] > 0.95
    assert np.corrcoef(v["opp"][body], np.abs(v["W"] - v["F"])[body])[0, 1] > 0.95


def test_end_slices_carry_a_folding_ghost(clean, participant):
    for station in range(1, 7):
        w = station_series(clean, station)["in"]
        image = volume(w)
        air = region_labels(participant, *lps_axes(w)) == 0
        # Wrap-around along z: the body at one slab end shows in the air of the other end.
        ghost = np.concatenate([image[:, :, k][air[:, :, k] & ~air[:, :, -1 - k]] for k in (0, -1)])
        middle = image[:, :, 1:-1][air[:, :, 1:-1]].mean()
        assert ghost.size > 0 and ghost.mean() > 3 * middle


def test_same_seed_same_bytes_other_seed_other_noise(tmp_path, participant, clean_zip, clean):
    again = write(tmp_path, participant)
    assert (
        hashlib.sha256(again.read_bytes()).digest()
        == hashlib.sha256(clean_zip.read_bytes()).digest()
    )
    other = read_zip(write(tmp_path, participant, "other.zip", seed=SEED + 1))
    a, b = volume(clean[12]), volume(other[12])
    assert a.shape == b.shape and not np.array_equal(a, b)
    assert [d.ImagePositionPatient for d in clean[12]] == [
        d.ImagePositionPatient for d in other[12]
    ]
