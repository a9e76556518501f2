"""One station's chosen series -> a `StationVolume`: grid checks, pixels, affine.

`station_volume` checks the grid, crops contrasts to their common slices,
decodes pixels and builds the RAS affine. Fatal: slices of a series differing
in matrix or spacing, gaps or uneven slice spacing, a sheared stack, contrasts
of a station on different grids or sharing fewer than all but
`MAX_CROPPED_SLICES` slices, pixel data of the wrong size in a slice we decode
(one bad slice means a corrupt zip, not a gap to paper over). Tolerated, with
a note: a short series (contrasts cropped to the slices they share).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from io import BytesIO

import numpy as np
import pydicom

from ageatlas.core.field20201 import DEFAULT_CONTRASTS
from ageatlas.core.qc import ParticipantExcluded
from ageatlas.ingest.dicom_headers import SliceHeader
from ageatlas.ingest.series import Series, fmt, z_text
from ageatlas.ingest.volume import StationVolume

__all__ = ["station_affine", "station_volume"]

#: Contrasts spelt out in exclusion reasons.
CONTRAST_NAMES = {"in": "in-phase", "opp": "opposed-phase", "F": "fat", "W": "water"}

#: A station's contrasts may differ by at most this many slices (43 of 44 is known).
MAX_CROPPED_SLICES = 2
#: Allowed deviation of a slice from the regular grid, as a fraction of the step.
SPACING_TOL = 0.01
#: Largest angle (degrees) between the slice step and the normal: no gantry tilt in 20201.
MAX_TILT_DEG = 1.0

# Explicit VRs whose value length takes 4 bytes (after 2 reserved) instead of 2.
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"SQ", b"UT", b"UC", b"UR"}


def _check_series_grid(series: Series) -> np.ndarray:
    """Validate in-plane grid and slice spacing of one series; return its step vector."""
    first = series.slices[0]
    for s in series.slices:
        if (s.rows, s.columns) != (first.rows, first.columns) or not np.allclose(
            s.pixel_spacing, first.pixel_spacing, rtol=1e-4, atol=1e-6
        ):
            raise ParticipantExcluded(
                f"{series.label}: slices differ in matrix or pixel spacing ({first.member!r} "
                f"{first.columns}x{first.rows} {first.pixel_spacing}, {s.member!r} "
                f"{s.columns}x{s.rows} {s.pixel_spacing})"
            )
    n = len(series.slices)
    if n < 2:
        raise ParticipantExcluded(f"{series.label}: only {n} slice")
    pos = series.positions
    step = (pos[-1] - pos[0]) / (n - 1)
    tilt = np.degrees(np.arccos(min(1.0, abs(np.dot(step, series.normal)) / np.linalg.norm(step))))
    if tilt > MAX_TILT_DEG:
        raise ParticipantExcluded(
            f"{series.label}: slices advance at {tilt:.1f} degrees to the slice normal "
            "(sheared stack or ImageOrientationPatient not matching the positions)"
        )
    off_grid = np.linalg.norm(pos - (pos[0] + np.outer(np.arange(n), step)), axis=1).max()
    if off_grid > SPACING_TOL * np.linalg.norm(step) + 1e-3:
        gaps = np.linalg.norm(np.diff(pos, axis=0), axis=1)
        raise ParticipantExcluded(
            f"{series.label}: slice spacing not uniform ({gaps.min():.3g} to {gaps.max():.3g} mm"
            f"{'; a slice missing inside the stack?' if gaps.max() > 1.5 * gaps.min() else ''})"
        )
    return step


def _common_slices(
    chosen: Mapping[str, Series], contrasts: Sequence[str]
) -> tuple[dict[str, slice], list[str]]:
    """Per contrast, the slices on the grid all requested contrasts share."""
    ref = max((chosen[c] for c in contrasts), key=lambda s: len(s.slices))
    ref_step = _check_series_grid(ref)
    step_len = float(np.linalg.norm(ref_step))
    ref0, first = ref.positions[0], ref.slices[0]
    ranges = {}
    for c in contrasts:
        s = chosen[c]
        step = _check_series_grid(s) if s is not ref else ref_step
        head = s.slices[0]
        start = round(float(np.dot(s.positions[0] - ref0, ref_step)) / step_len**2)
        misfit = np.linalg.norm(s.positions[0] - (ref0 + start * ref_step))
        if (
            (head.rows, head.columns) != (first.rows, first.columns)
            or not np.allclose(head.pixel_spacing, first.pixel_spacing, rtol=1e-4)
            or np.linalg.norm(step - ref_step) > SPACING_TOL * step_len
            or misfit > SPACING_TOL * step_len + 1e-3
        ):
            raise ParticipantExcluded(
                f"{s.label} and {ref.label} of one station are not on the same grid "
                f"({head.columns}x{head.rows}x{len(s.slices)} at {fmt(s.positions[0])} step "
                f"{fmt(step)} vs {first.columns}x{first.rows}x{len(ref.slices)} at {fmt(ref0)} "
                f"step {fmt(ref_step)})"
            )
        ranges[c] = (start, start + len(s.slices))
    lo, hi = max(r[0] for r in ranges.values()), min(r[1] for r in ranges.values())
    longest = max(len(chosen[c].slices) for c in contrasts)
    if hi - lo < longest - MAX_CROPPED_SLICES or hi - lo < 2:
        raise ParticipantExcluded(
            f"contrasts {', '.join(contrasts)} share only {max(hi - lo, 0)} of {longest} slices"
        )
    cuts = {c: slice(lo - r[0], hi - r[0]) for c, r in ranges.items()}
    notes = []
    if any(len(chosen[c].slices) != hi - lo for c in contrasts):
        counts = ", ".join(f"{c} {len(chosen[c].slices)}" for c in contrasts)
        notes.append(
            f"cropped {', '.join(contrasts)} to their {hi - lo} common slices "
            f"(slices per contrast: {counts})"
        )
    return cuts, notes


def _short_series_notes(chosen: Mapping[str, Series]) -> list[str]:
    most = max(len(s.slices) for s in chosen.values())
    return [
        f"{s.label} has {len(s.slices)} slices, {most} in the longest series of its station"
        for s in chosen.values()
        if len(s.slices) < most
    ]


def _pixel_value(head: SliceHeader) -> tuple[int, int]:
    """(start, length) of the Pixel Data value in ``head.data``; length -1 if encapsulated."""
    data, pos = head.data, head.pixel_offset
    order = "little" if head.little_endian else "big"
    if head.implicit_vr:
        return pos + 8, int.from_bytes(data[pos + 4 : pos + 8], order)
    if data[pos + 4 : pos + 6] in _LONG_VRS:
        return pos + 12, int.from_bytes(data[pos + 8 : pos + 12], order)
    return pos + 8, int.from_bytes(data[pos + 6 : pos + 8], order)


def _frame(head: SliceHeader, series: Series) -> np.ndarray:
    """One slice's stored values as a (rows, columns) array, without copying."""
    start, length = _pixel_value(head)
    nbytes = head.bits_allocated // 8
    expected = head.rows * head.columns * nbytes
    if length == 0xFFFFFFFF:
        return _decode_encapsulated(head, series)
    if length not in (expected, expected + (expected & 1)) or len(head.data) < start + expected:
        raise ParticipantExcluded(
            f"member {head.member!r} ({series.label}): pixel data has "
            f"{min(length, len(head.data) - start)} bytes, expected {head.columns} x {head.rows} "
            f"x {nbytes} = {expected}"
        )
    dtype = np.dtype(f"{'<' if head.little_endian else '>'}{'i' if head.signed else 'u'}{nbytes}")
    return np.frombuffer(head.data, dtype, head.rows * head.columns, start).reshape(
        head.rows, head.columns
    )


def _decode_encapsulated(head: SliceHeader, series: Series) -> np.ndarray:
    """Compressed pixel data: let pydicom (and whatever plugins exist) decode it."""
    try:
        array = pydicom.dcmread(BytesIO(head.data), force=True).pixel_array
    except Exception as err:  # noqa: BLE001 - decoder plugins raise anything
        raise ParticipantExcluded(
            f"member {head.member!r} ({series.label}): compressed pixel data cannot be decoded "
            f"({type(err).__name__}: {err})"
        ) from None
    if array.shape != (head.rows, head.columns):
        raise ParticipantExcluded(
            f"member {head.member!r} ({series.label}): decoded pixel data has shape "
            f"{array.shape}, expected ({head.rows}, {head.columns})"
        )
    return array


def _decode(series: Series, cut: slice) -> np.ndarray:
    """float32 (columns, rows, slices) with RescaleSlope/Intercept applied."""
    slices = series.slices[cut]
    first = slices[0]
    stack = np.empty((len(slices), first.rows, first.columns), np.float32)
    for k, head in enumerate(slices):
        if head.data is None:
            raise ParticipantExcluded(f"{series.label}: pixel data of {head.member!r} not read")
        stack[k] = _frame(head, series)
    slopes = np.array([s.slope for s in slices], np.float32)
    intercepts = np.array([s.intercept for s in slices], np.float32)
    if (slopes != 1).any() or (intercepts != 0).any():
        stack *= slopes[:, None, None]
        stack += intercepts[:, None, None]
    return stack.transpose(2, 1, 0)  # (slice, row, column) -> (i=column, j=row, k=slice)


def station_affine(series: Series, cut: slice = slice(None)) -> np.ndarray:
    """4x4 voxel (column, row, slice) -> RAS mm affine, as nibabel/dcm2niix place it."""
    slices = series.slices[cut]
    pos = np.array([s.position for s in slices], dtype=float)
    o = np.asarray(slices[0].orientation, dtype=float)
    row_mm, col_mm = slices[0].pixel_spacing  # PixelSpacing = (between rows, between columns)
    step = (pos[-1] - pos[0]) / max(len(pos) - 1, 1)
    lps = np.eye(4)
    lps[:3, 0] = o[:3] * col_mm  # i runs along a row, i.e. across columns
    lps[:3, 1] = o[3:] * row_mm
    lps[:3, 2] = step
    lps[:3, 3] = pos[0]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM LPS -> NIfTI RAS


def station_volume(
    index: int, chosen: Mapping[str, Series], contrasts: Sequence[str] = DEFAULT_CONTRASTS
) -> StationVolume:
    """Decode one station's requested contrasts onto one grid (notes say what was tolerated)."""
    try:
        missing = [c for c in contrasts if c not in chosen]
        if missing:
            raise ParticipantExcluded(
                "no " + " and no ".join(f"{c} ({CONTRAST_NAMES[c]})" for c in missing) + " series"
            )
        notes = _short_series_notes(chosen)
        cuts, crop_notes = _common_slices(chosen, contrasts)
        images = {c: _decode(chosen[c], cuts[c]) for c in contrasts}
    except ParticipantExcluded as err:
        raise ParticipantExcluded(
            f"station {index} ({z_text(list(chosen.values()))}): {err}"
        ) from None
    geometry = chosen[contrasts[0]]
    return StationVolume(
        index=index,
        images=images,
        affine=station_affine(geometry, cuts[contrasts[0]]),
        series_time=geometry.time,
        notes=[f"station {index}: {n}" for n in notes + crop_notes],
    )
