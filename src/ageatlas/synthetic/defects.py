"""The defects a participant's zip can carry; the series-level ones are applied here.

Defects (``write_participant_zip(defects=...)``, combinable). The affected station is drawn
deterministically per (participant, seed, defect); ``defect_station`` returns it.

- ``short_series``: one series of a breath-hold station (2-4) lacks its last (most inferior)
  slice: 43 instead of 44 at full resolution.
- ``repeat_station``: one station acquired twice. The first acquisition keeps its SeriesNumbers
  but is motion-corrupted (phase-encode ghosts) at a lower gain; the repeat, at the same position
  with SeriesNumbers 25..28 and a SeriesTime after all others, is identical to the clean
  acquisition.
- ``fat_water_swap``: the F and W pixel data of one station are exchanged (descriptions
  unchanged).
- ``missing_station``: all series of one station are absent.
- ``missing_water``: the W series of one station is absent.
- ``bad_orientation``: one station's four series carry a coronal ImageOrientationPatient
  ``[1,0,0,0,0,-1]``, inconsistent with the others.
- ``non_dicom_member``: an extra text member with a UID-like ``.dcm`` name.
- ``path_traversal_member``: an extra member named ``../evil.dcm``.
- ``no_manifest``: no manifest member.
- ``garbled_manifest``: the manifest holds random bytes.
- ``manifest_cvs``: the manifest is named ``manifest.cvs`` whatever the draw.
- ``truncated_zip``: the zip file is cut to half its bytes.
- ``empty_zip``: a valid zip archive with no members.
- ``zero_bytes``: a 0-byte file (takes precedence over every other defect; ``empty_zip`` takes
  precedence over the member defects).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ageatlas.core import field20201 as layout
from ageatlas.synthetic.acquisition import CORONAL, Series
from ageatlas.synthetic.participants import SyntheticParticipant

_STATION_DEFECTS = {
    "short_series": (2, 3, 4),
    "repeat_station": (1, 2, 3, 4, 5, 6),
    "fat_water_swap": (1, 2, 3, 4, 5, 6),
    "missing_station": (1, 2, 3, 4, 5, 6),
    "missing_water": (1, 2, 3, 4, 5, 6),
    "bad_orientation": (1, 2, 3, 4, 5, 6),
}
#: Every defect name ``write_participant_zip`` accepts (see the module docstring).
DEFECTS: tuple[str, ...] = (
    *_STATION_DEFECTS,
    "non_dicom_member",
    "path_traversal_member",
    "no_manifest",
    "garbled_manifest",
    "manifest_cvs",
    "truncated_zip",
    "empty_zip",
    "zero_bytes",
)


def check_defects(defects: Sequence[str]) -> frozenset[str]:
    if isinstance(defects, str):
        defects = (defects,)
    unknown = set(defects) - set(DEFECTS)
    if unknown:
        raise ValueError(f"unknown defect(s) {sorted(unknown)}; known: {', '.join(DEFECTS)}")
    return frozenset(defects)


def seed_or_zero(seed: int | None) -> int:
    """The seed the public entry points take: None means 0."""
    return 0 if seed is None else int(seed)


def defect_station(
    participant: SyntheticParticipant, defect: str, seed: int | None = None
) -> int | None:
    """Station (1..6) a station-level defect hits for this participant and seed; None for others."""
    check_defects((defect,))
    if defect not in _STATION_DEFECTS:
        return None
    rng = np.random.default_rng([seed_or_zero(seed), participant.eid, 2, DEFECTS.index(defect)])
    return int(rng.choice(_STATION_DEFECTS[defect]))


def _short_series_contrast(participant: SyntheticParticipant, seed: int) -> str:
    rng = np.random.default_rng([seed, participant.eid, 2, DEFECTS.index("short_series"), 1])
    return str(rng.choice(layout.CONTRASTS))


def apply_series_defects(
    series: list[Series], p, seed: int, defects: frozenset[str]
) -> list[Series]:
    hit = {d: defect_station(p, d, seed) for d in defects if d in _STATION_DEFECTS}
    if "fat_water_swap" in hit:
        at = [s for s in series if s.grid.spec.index == hit["fat_water_swap"]]
        fat = {s.number: s for s in at if s.contrast == "F"}
        water = {s.number: s for s in at if s.contrast == "W"}
        for f_num, f in fat.items():
            w = water[f_num + 1]  # W follows F in SeriesNumber
            f.pixels, w.pixels = w.pixels, f.pixels
    if "short_series" in hit:
        contrast = _short_series_contrast(p, seed)
        for s in series:
            if (
                s.grid.spec.index == hit["short_series"]
                and s.contrast == contrast
                and s.number <= 24
            ):
                s.pixels = s.pixels[:, :, :-1]
    if "bad_orientation" in hit:
        for s in series:
            if s.grid.spec.index == hit["bad_orientation"]:
                s.orientation = CORONAL
    if "missing_water" in hit:
        series = [
            s
            for s in series
            if not (s.grid.spec.index == hit["missing_water"] and s.contrast == "W")
        ]
    if "missing_station" in hit:
        series = [s for s in series if s.grid.spec.index != hit["missing_station"]]
    return series


__all__ = [
    "DEFECTS",
    "defect_station",
]
