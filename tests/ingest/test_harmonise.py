"""ageatlas.ingest.harmonise: station gains, fat-water swaps and N4."""

from __future__ import annotations

import numpy as np
import pytest
from station_helpers import BOTTOMS, GRID, TOPS, four_stations, grid_world, make_station

from ageatlas.ingest.grid import Grid
from ageatlas.ingest.harmonise import attribute_swaps, propagate_gains
from ageatlas.ingest.stitch import StitchOptions, stitch
from ageatlas.ingest.volume import StationVolume


def test_no_seam_after_harmonisation_of_station_gains():
    body = lambda x, y: (x / 100) ** 2 + (y / 70) ** 2 < 1  # noqa: E731
    fns = {
        "W": lambda x, y, z: body(x, y) * 100 * (1 + 0.3 * np.sin(z / 150)),
        "F": lambda x, y, z: body(x, y) * 40 * (1 + 0.5 * (x / 100) ** 2),
    }
    gains = (0.8, 1.6, 1.0, 0.5)
    options = StitchOptions(trim_slices=0)
    x, y, z = None, None, None

    def slice_ratio(result):
        nonlocal x, y, z
        x, y, z = grid_world(result)
        inner = (x / 90) ** 2 + (y / 60) ** 2 < 1
        truth = fns["W"](x, y, z) + fns["F"](x, y, z)
        out = result.images["W"] + result.images["F"]
        return (out * inner).sum(axis=(0, 1)) / (truth * inner).sum(axis=(0, 1))

    ratio = slice_ratio(stitch(four_stations(fns, gains), GRID, options))
    # Reference = middle station (head-to-foot position 1): everything at its gain.
    np.testing.assert_allclose(ratio, gains[1], rtol=0.01)
    # Across each junction (slice means above vs below its overlap): no step.
    zc = z[0, 0]
    for top_lower, bottom_upper in zip(TOPS[1:], BOTTOMS):
        above = ratio[np.argmin(np.abs(zc - (top_lower + 6)))]
        below = ratio[np.argmin(np.abs(zc - (bottom_upper - 6)))]
        assert abs(above / below - 1) < 0.01
    raw = slice_ratio(
        stitch(four_stations(fns, gains), GRID, StitchOptions(trim_slices=0, harmonise=False))
    )
    assert raw.max() / raw.min() > 2.5  # the test sees seams when they are there


def test_only_implausible_gains_become_qc_warnings():
    body = lambda x, y: (x / 100) ** 2 + (y / 70) ** 2 < 1  # noqa: E731
    fns = {"W": lambda x, y, z: body(x, y) * 100.0, "F": lambda x, y, z: body(x, y) * 40.0}
    usual = stitch(four_stations(fns, (1.0, 1.0, 1.4, 1.0)), GRID, StitchOptions(trim_slices=0))
    assert not any("rescaled" in n for n in usual.notes)
    assert any("station gains" in i for i in usual.info)
    odd = stitch(four_stations(fns, (1.0, 1.0, 4.0, 1.0)), GRID, StitchOptions(trim_slices=0))
    assert any("rescaled by 0.25" in n for n in odd.notes)


# ------------------------------------------------------------ fat-water swaps

TEXTURED = {
    "W": lambda x, y, z: ((x / 110) ** 2 + (y / 80) ** 2 < 1) * (100 + 40 * np.sin(x / 20)),
    "F": lambda x, y, z: ((x / 110) ** 2 + (y / 80) ** 2 < 1) * (60 + 50 * np.cos(y / 15 + z / 60)),
}


def swap_station(vol):
    images = dict(vol.images)
    images["W"], images["F"] = images["F"], images["W"]
    return StationVolume(vol.index, images, vol.affine)


@pytest.mark.parametrize("pos", [0, 2, 3])  # head end, middle, foot end
def test_fat_water_swap_flagged_on_the_right_station_and_fixed(pos):
    clean = stitch(four_stations(TEXTURED), GRID)
    assert clean.swapped_stations == []
    stations = four_stations(TEXTURED)
    stations[pos] = swap_station(stations[pos])
    fixed = stitch(stations, GRID)
    assert fixed.swapped_stations == [pos + 1]
    assert any(
        f"station {pos + 1}: fat-water swap suspected; W and F swapped back" in n
        for n in fixed.notes
    )
    for c in ("W", "F"):
        np.testing.assert_allclose(fixed.images[c], clean.images[c], rtol=1e-5, atol=1e-3)
    kept = stitch(stations, GRID, StitchOptions(fix_swaps=False))
    assert kept.swapped_stations == [pos + 1]
    assert not np.allclose(kept.images["W"], clean.images["W"], atol=1)


def test_swap_found_through_overlaps_too_thin_after_trimming():
    # Coarse stations overlapping by one slice: trims are reduced to 0/1 and no
    # grid slice lies in the remaining zero-width overlap. The statistics then
    # come from the untrimmed end slices.
    stations = [
        make_station(1, TEXTURED, (32, 24, 12), (8, 8, 10), 0.0),
        make_station(2, TEXTURED, (32, 24, 10), (8, 8, 12), -98.0),
        make_station(3, TEXTURED, (32, 24, 12), (8, 8, 10), -196.0),
    ]
    stations[1] = swap_station(stations[1])
    result = stitch(stations, Grid(shape=(30, 22, 50), spacing=(8.0, 8.0, 6.0)))
    assert result.swapped_stations == [2]
    assert any("untrimmed end slices" in n for n in result.info)


def test_attribute_swaps_from_junction_parity():
    assert attribute_swaps([False] * 5) == []
    assert attribute_swaps([True, False, False, False, False]) == [0]  # head station
    assert attribute_swaps([False, False, False, False, True]) == [5]  # knee station
    assert attribute_swaps([False, True, True, False, False]) == [2]  # middle station
    assert attribute_swaps([False, True, False, True, False]) == [2, 3]  # two neighbours
    tie = [False, True, False]  # 0, 0 | 1, 1
    assert attribute_swaps(tie) == []
    assert attribute_swaps(tie, fat_fraction=[0.3, 0.2, 0.7, 0.8]) == [2, 3]
    assert attribute_swaps(tie, fat_fraction=[0.7, 0.8, 0.3, 0.2]) == [0, 1]
    # Undetermined junctions (None) cut the chain: station 3 swapped, 2 isolated.
    assert attribute_swaps([False, None, None, True, False]) == [3]
    assert attribute_swaps([None, None]) == []


def test_propagate_gains_from_the_reference_station():
    np.testing.assert_allclose(propagate_gains([2.0, None, 0.5], ref=1), [0.5, 1.0, 1.0, 0.5])
    np.testing.assert_allclose(propagate_gains([], ref=0), [1.0])


# ------------------------------------------------------------------------- N4


def test_n4_reduces_a_planted_smooth_bias_field():
    body = lambda x, y: (x / 100) ** 2 + (y / 75) ** 2 < 1  # noqa: E731
    bias = lambda x, y, z: np.exp(0.35 * x / 100 - 0.25 * y / 75 + 0.2 * np.sin(z / 120))  # noqa: E731
    fns = {
        "W": lambda x, y, z: body(x, y) * 100 * bias(x, y, z),
        "F": lambda x, y, z: body(x, y) * 30 * bias(x, y, z),
    }

    def cv(result):
        x, y, _ = grid_world(result)
        inner = np.broadcast_to(((x / 90) ** 2 + (y / 65) ** 2 < 1), result.images["W"].shape)
        tissue = result.images["W"][inner]
        return tissue.std() / tissue.mean()

    plain = stitch(four_stations(fns), GRID)
    corrected = stitch(four_stations(fns), GRID, StitchOptions(n4=True))
    assert any("N4" in n for n in corrected.info)
    assert cv(plain) > 0.15
    assert cv(corrected) < 0.5 * cv(plain)
