"""Slices into series and series into stations; one acquisition per contrast.

- `group_series`: slices -> series (SeriesInstanceUID, SeriesNumber,
  SeriesDescription, SeriesTime), one orientation checked, sorted along the
  slice normal; exact duplicate slices dropped, non-Dixon series ignored.
- `group_stations`: series whose slice ranges intersect by more than half
  their union are one station (a repeat overlaps fully, neighbours by a few
  cm); stations sorted head to foot.
- `select_acquisitions`: one series per contrast, the latest when repeated.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ageatlas.core.qc import ParticipantExcluded
from ageatlas.ingest.dicom_headers import SliceHeader, names

__all__ = ["Series", "group_series", "check_orientation", "group_stations", "select_acquisitions"]

#: Direction cosines that differ by less than this are the same orientation.
ORIENTATION_TOL = 1e-3
#: Slice positions closer than this (mm) along the normal are duplicates.
DUPLICATE_TOL_MM = 1e-2


@dataclass(eq=False)
class Series:
    """One Dixon series: its slices sorted along the slice normal (ascending)."""

    contrast: str
    number: int | None
    description: str
    uid: str
    time: str
    slices: list[SliceHeader] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"series {self.number if self.number is not None else '?'} {self.description!r}"

    @property
    def orientation(self) -> np.ndarray:
        return np.asarray(self.slices[0].orientation, dtype=float)

    @property
    def normal(self) -> np.ndarray:
        return _normal(self.orientation)

    @property
    def positions(self) -> np.ndarray:
        return np.array([s.position for s in self.slices], dtype=float)

    @property
    def along_normal(self) -> np.ndarray:
        return self.positions @ self.normal

    @property
    def time_seconds(self) -> float:
        return _tm_seconds(self.time)


def _normal(orientation: np.ndarray) -> np.ndarray:
    return np.cross(orientation[:3], orientation[3:])


def _tm_seconds(tm: str) -> float:
    """DICOM TM (HHMMSS.ffffff, or the old HH:MM:SS) as seconds; -1 if unreadable."""
    digits = tm.replace(":", "").strip()
    try:
        return int(digits[0:2]) * 3600 + int(digits[2:4] or 0) * 60 + float(digits[4:] or 0)
    except ValueError:
        return -1.0


def group_series(headers: Sequence[SliceHeader]) -> tuple[list[Series], list[str]]:
    """Dixon slices grouped into series sorted along their normal; non-Dixon ignored.

    Raises ParticipantExcluded when slices or series disagree on orientation
    (checked first: a wrong orientation makes everything else look wrong) or a
    series has two different slices at one position; an exact duplicate (same
    SOPInstanceUID) is dropped with a warning.
    """
    groups: dict[tuple, list[SliceHeader]] = defaultdict(list)
    ignored: dict[tuple, list[SliceHeader]] = defaultdict(list)
    for head in headers:
        (groups if head.contrast else ignored)[head.series_key].append(head)
    warnings = [
        f"ignored series {'?' if key[1] is None else key[1]} {key[2]!r} ({len(members)} "
        "slices): not a Dixon in/opp/F/W series"
        for key, members in ignored.items()
    ]
    series = [
        Series(
            contrast=key[4],
            number=key[1],
            description=key[2],
            uid=key[0],
            time=key[3],
            slices=list(members),
        )
        for key, members in groups.items()
    ]
    for one in series:
        _check_slice_orientations(one)
    if series:
        check_orientation(series)
    for one in series:
        warnings += _sort_slices(one)
    return series, warnings


def _check_slice_orientations(series: Series) -> None:
    orientation = series.orientation
    for s in series.slices:
        if np.abs(np.asarray(s.orientation) - orientation).max() > ORIENTATION_TOL:
            raise ParticipantExcluded(
                f"{series.label}: ImageOrientationPatient differs between slices "
                f"({fmt(orientation)} in {series.slices[0].member!r}, {fmt(s.orientation)} "
                f"in {s.member!r})"
            )
    if not _orthonormal(orientation):
        raise ParticipantExcluded(
            f"{series.label}: ImageOrientationPatient {fmt(orientation)} is not orthonormal"
        )


def _sort_slices(series: Series) -> list[str]:
    """Sort along the normal; drop exact duplicates, refuse other slices at one position."""
    normal = series.normal  # list.sort empties the list while it runs: no property inside
    series.slices.sort(key=lambda s: float(np.dot(s.position, normal)))
    kept, dropped = [series.slices[0]], []
    for s in series.slices[1:]:
        prev = kept[-1]
        if np.dot(np.subtract(s.position, prev.position), normal) >= DUPLICATE_TOL_MM:
            kept.append(s)
        elif np.linalg.norm(np.subtract(s.position, prev.position)) > DUPLICATE_TOL_MM:
            raise ParticipantExcluded(
                f"{series.label}: slices at {fmt(prev.position)} and {fmt(s.position)} lie in "
                f"one plane of ImageOrientationPatient {fmt(series.orientation)}: orientation and "
                "positions disagree"
            )
        elif s.sop_uid and s.sop_uid == prev.sop_uid:
            dropped.append(s.member)
        else:
            raise ParticipantExcluded(
                f"{series.label}: two different slices at the same position "
                f"{fmt(s.position)} ({prev.member!r}, {s.member!r})"
            )
    series.slices = kept
    if dropped:
        return [
            f"{series.label}: dropped {len(dropped)} duplicate slice(s) "
            f"(same SOPInstanceUID): {names(dropped)}"
        ]
    return []


def _orthonormal(o: np.ndarray) -> bool:
    return (
        abs(np.linalg.norm(o[:3]) - 1) < ORIENTATION_TOL
        and abs(np.linalg.norm(o[3:]) - 1) < ORIENTATION_TOL
        and abs(np.dot(o[:3], o[3:])) < ORIENTATION_TOL
    )


def fmt(values) -> str:
    """Numbers as a short bracketed list, for exclusion reasons."""
    return "[" + ", ".join(f"{float(v):g}" for v in values) + "]"


def check_orientation(series: Sequence[Series]) -> None:
    """All Dixon series of a participant must share one ImageOrientationPatient."""
    votes = Counter(tuple(np.round(s.orientation, 3)) for s in series)
    common = np.array(votes.most_common(1)[0][0])  # so the message names the odd ones out
    odd = sorted(
        (s for s in series if np.abs(s.orientation - common).max() > ORIENTATION_TOL),
        key=lambda s: s.number if s.number is not None else -1,
    )
    if odd:
        raise ParticipantExcluded(
            f"inconsistent ImageOrientationPatient between series: {fmt(odd[0].orientation)} in "
            f"{', '.join(s.label for s in odd[:4])}{' ...' if len(odd) > 4 else ''}; "
            f"{fmt(common)} in {len(series) - len(odd)} other series"
        )


def _z_range(series: Series) -> tuple[float, float]:
    """Slice range along the normal, padded by half a step so 1-slice series count."""
    along = series.along_normal
    half = (along[-1] - along[0]) / max(len(along) - 1, 1) / 2 or 0.5
    return along[0] - half, along[-1] + half


def group_stations(series: Sequence[Series]) -> list[list[Series]]:
    """Series at one table position -> one station; stations sorted head to foot.

    Two series are one station when the intersection of their slice ranges is more
    than half of their union: a repeat or a series a slice short overlaps almost
    fully, neighbouring stations by a few cm only, and a stub of a series cannot
    bridge two stations.
    """
    ranges = [_z_range(s) for s in series]
    parent = list(range(len(series)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(len(series)):
        for j in range(i):
            (a0, a1), (b0, b1) = ranges[i], ranges[j]
            if min(a1, b1) - max(a0, b0) > 0.5 * (max(a1, b1) - min(a0, b0)):
                parent[root(i)] = root(j)
    stations: dict[int, list[Series]] = defaultdict(list)
    for i, s in enumerate(series):
        stations[root(i)].append(s)
    return sorted(stations.values(), key=_centre_z, reverse=True)


def _centre_z(station: Sequence[Series]) -> float:
    """Mean LPS z, which grows towards the head whatever the slice order."""
    return float(np.mean([s.positions[:, 2].mean() for s in station]))


def z_text(station: Sequence[Series]) -> str:
    """A station's LPS z range, naming it in warnings and exclusion reasons."""
    z = np.concatenate([s.positions[:, 2] for s in station])
    return f"z {z.min():.1f} to {z.max():.1f} mm"


def select_acquisitions(station: Sequence[Series]) -> tuple[dict[str, Series], list[str]]:
    """One series per contrast: the later acquisition (SeriesTime, then SeriesNumber)."""
    by_contrast: dict[str, list[Series]] = defaultdict(list)
    for s in station:
        by_contrast[s.contrast].append(s)
    chosen, replaced = {}, []
    for contrast, candidates in by_contrast.items():
        candidates.sort(key=lambda s: (s.time_seconds, s.number if s.number is not None else -1))
        chosen[contrast] = kept = candidates[-1]
        if len(candidates) > 1:
            older = ", ".join(f"{c.number} at {c.time or '?'}" for c in candidates[:-1])
            replaced.append(f"{contrast}: {kept.number} at {kept.time or '?'} over {older}")
    warnings = []
    if replaced:
        warnings.append(
            f"acquired more than once ({z_text(station)}); kept the later series "
            f"({'; '.join(replaced)})"
        )
    return chosen, warnings
