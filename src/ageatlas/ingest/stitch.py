"""Stitch the Dixon stations of a UK Biobank neck-to-knee scan onto one grid.

`stitch` runs the steps below; their code lives in `placement`, `grid`,
`resample`, `blend` and `harmonise`.

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

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ageatlas.core.field20201 import DEFAULT_CONTRASTS
from ageatlas.core.qc import ParticipantExcluded
from ageatlas.ingest.blend import blend_weights, compose, runs
from ageatlas.ingest.grid import Grid
from ageatlas.ingest.harmonise import find_swaps, harmonise, junction_overlaps, n4_bias_field
from ageatlas.ingest.placement import AlignedStation, Geometry, ObliqueStation, place_stations
from ageatlas.ingest.volume import StationVolume

#: Blend weight kept wherever a station has data. Where a neighbour also has
#: data the floor is negligible; where it does not (beyond a narrower station's
#: rows), the voxel is not left empty on this station's edge slice.
WEIGHT_FLOOR = 1e-6


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

    geos = sorted((Geometry(v) for v in stations), key=lambda g: -g.centre[2])
    affine = place_stations(geos, grid, options.trim_slices, notes, info)
    placed = []
    for g in geos:
        if g.perm is None:
            info.append(f"station {g.label} is oblique: resampled with map_coordinates")
            placed.append(ObliqueStation(g, affine, grid))
        else:
            placed.append(AlignedStation(g, affine, grid))

    z = affine[2, 3] + grid.spacing[2] * np.arange(grid.shape[2])
    zvalid = np.array([st.zvalid for st in placed])
    weights = blend_weights(z, [g.extent() for g in geos], options.blend)
    weights = np.maximum(weights * zvalid, WEIGHT_FLOOR * zvalid)
    total = weights.sum(axis=0)
    np.divide(weights, total, out=weights, where=total > 0)

    level = ("W", "F") if has_wf else tuple(options.contrasts)
    overlaps = junction_overlaps(placed, affine, grid, level, info)
    swapped = find_swaps(placed, overlaps, options.fix_swaps, notes) if has_wf else []
    gains = (
        harmonise(placed, overlaps, level, notes, info)
        if options.harmonise
        else np.ones(len(placed))
    )

    # Slices fed by several stations (or any oblique one) are normalised by their
    # per-voxel weight sum, which also covers stations narrower than the grid.
    oblique = np.array([isinstance(st, ObliqueStation) for st in placed])
    shared = ((weights > 0).sum(axis=0) > 1) | (weights[oblique] > 0).any(axis=0)
    den_runs = []
    for k0, k1, _ in runs(shared, np.ones_like(shared)):
        den = np.zeros((k1 - k0, grid.shape[1], grid.shape[0]), np.float32)
        for st, w in zip(placed, weights):
            if w[k0:k1].any():
                den += w[k0:k1, None, None].astype(np.float32) * st.valid(k0, k1)
        den_runs.append((k0, k1, den))

    wanted = list(dict.fromkeys([*options.contrasts, *(("W", "F") if options.n4 else ())]))
    stitched = {}
    for c in wanted:
        stitched[c] = compose(placed, c, gains, weights, shared, den_runs, grid)
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
