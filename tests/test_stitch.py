"""Tests of ageatlas.stitch on small StationVolumes built directly from world functions."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from ageatlas.qc import ParticipantExcluded
from ageatlas.stitch import (
    AxisMap,
    Grid,
    StitchOptions,
    attribute_swaps,
    blend_weights,
    grid_affine,
    plan_trims,
    propagate_gains,
    resample_axis,
    stitch,
)
from ageatlas.volume import StationVolume

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


# ------------------------------------------------------------------ geometry


def test_grid_affine_maps_voxel_centres_in_ras():
    grid = Grid(shape=(10, 8, 20), spacing=(2.0, 3.0, 4.0))
    affine = grid_affine(grid, centre_xy=(5.0, -7.0), top_z=100.0)
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    np.testing.assert_allclose(affine @ [4.5, 3.5, 19, 1], [5.0, -7.0, 100.0, 1])
    np.testing.assert_allclose(affine @ [0, 0, 0, 1], [5.0 - 9.0, -7.0 - 10.5, 100.0 - 76.0, 1])
    np.testing.assert_allclose(np.diag(affine)[:3], grid.spacing)


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


@pytest.mark.parametrize("oblique", [False, True])
def test_linear_world_function_reproduced_exactly(oblique):
    stations = four_stations(LINEAR, oblique=oblique)
    shuffled = [stations[i] for i in (2, 0, 3, 1)]  # order must come from the affines
    result = stitch(shuffled, GRID)
    x, y, z = grid_world(result)
    for c, fn in LINEAR.items():
        out = result.images[c]
        assert out.shape == GRID.shape and out.dtype == np.float32
        assert out.flags.f_contiguous
        np.testing.assert_allclose(out, fn(x, y, z), atol=0.02)
    assert result.swapped_stations == []
    assert any("oblique" in n for n in result.info) == oblique


def test_outputs_optional_contrasts_and_rejects_missing_ones():
    fns = {**LINEAR, "in": lambda x, y, z: LINEAR["W"](x, y, z) + LINEAR["F"](x, y, z)}
    result = stitch(four_stations(fns), GRID, StitchOptions(contrasts=("W", "F", "in")))
    np.testing.assert_allclose(
        result.images["in"], result.images["W"] + result.images["F"], rtol=1e-5
    )
    with pytest.raises(ParticipantExcluded, match="lacks contrast"):
        stitch(four_stations(LINEAR), GRID, StitchOptions(contrasts=("W", "opp")))


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


# -------------------------------------------------------- trimming and coverage


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


# ------------------------------------------------------------------- blending


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
    bias = lambda x, y, z: np.exp(
        0.35 * x / 100 - 0.25 * y / 75 + 0.2 * np.sin(z / 120)
    )  # noqa: E731
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
