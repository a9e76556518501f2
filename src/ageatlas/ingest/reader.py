"""Read one participant's field-20201 zip into station volumes: `read_participant`.

Everything is derived from DICOM tags, never from member names, file order or
the manifest (its header "can not be relied on", see docs/sources.md, so it is
skipped). Steps, and the module holding each:

1. `scan_zip` (`dicom_headers`, in a zip opened by `zip_archive`): parse every
   member's header only (pydicom, ``stop_before_pixels``) and keep the
   undecoded bytes of members whose contrast was requested.
2. `group_series` (`series`): slices -> series (SeriesInstanceUID,
   SeriesNumber, SeriesDescription, SeriesTime), one orientation checked,
   sorted along the slice normal.
3. `group_stations` (`series`): series whose slice ranges intersect by more
   than half their union are one station (a repeat overlaps fully, neighbours
   by a few cm); stations sorted head to foot.
4. `select_acquisitions` (`series`): one series per contrast, the latest when
   repeated.
5. `station_volume` (`station_volume`): check the grid, crop contrasts to
   their common slices, decode pixels and build the RAS affine.

Fatal defects raise `ParticipantExcluded` with the zip name and the problem;
tolerated oddities come back as warning strings (also kept in each station's
``notes``).

- Excluded: missing, 0-byte, non-zip, truncated or empty file; declared sizes
  over `ZipLimits`; a member that cannot be read (CRC, encryption) or a DICOM
  that cannot be parsed; a bad geometry value in any Dixon slice, or pixel
  data of the wrong size in a slice we decode (one bad slice means a corrupt
  zip, not a gap to paper over);
  station count other than ``expected_stations``; a station without a
  requested contrast; orientation differing within or between series, or not
  matching the slice positions; two different slices at one position; gaps
  or uneven slice spacing; contrasts of a station on different grids or
  sharing fewer than all but `MAX_CROPPED_SLICES` slices.
- Warned: unsafe member names and non-DICOM members (ignored), non-Dixon
  series (ignored), exact duplicate slices (dropped), a repeated station (the
  later SeriesTime kept), a short series (contrasts cropped to the slices
  they share).
- Silent: manifest missing, garbled or misspelled. Members of contrasts not
  requested are only header-checked: their pixels and CRC are never read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ageatlas.core.field20201 import CONTRASTS, DEFAULT_CONTRASTS, STATIONS
from ageatlas.core.qc import ParticipantExcluded
from ageatlas.ingest.dicom_headers import scan_zip
from ageatlas.ingest.series import group_series, group_stations, select_acquisitions, z_text
from ageatlas.ingest.station_volume import station_volume
from ageatlas.ingest.volume import StationVolume
from ageatlas.ingest.zip_archive import ZipLimits

__all__ = ["read_participant"]


def read_participant(
    zip_path: str | Path,
    *,
    contrasts: Sequence[str] = DEFAULT_CONTRASTS,
    limits: ZipLimits = ZipLimits(),
    expected_stations: int = len(STATIONS),
) -> tuple[list[StationVolume], list[str]]:
    """Stations sorted head to foot (index 1..n) and a list of tolerated oddities (QC warnings).

    Raises ParticipantExcluded(reason) naming the file and the problem for anything fatal.
    """
    contrasts = tuple(contrasts)
    unknown = [c for c in contrasts if c not in CONTRASTS]
    if unknown or not contrasts:
        raise ValueError(f"contrasts must be a non-empty subset of {CONTRASTS}, got {contrasts}")
    name = Path(zip_path).name
    try:
        volumes, warnings = _read(zip_path, contrasts, limits, expected_stations)
    except ParticipantExcluded as err:
        raise ParticipantExcluded(f"{name}: {err}") from None
    return volumes, [f"{name}: {w}" for w in warnings]


def _read(zip_path, contrasts, limits, expected_stations):
    headers, warnings = scan_zip(zip_path, contrasts=contrasts, limits=limits)
    series, series_warnings = group_series(headers)
    warnings += series_warnings
    if not series:
        raise ParticipantExcluded(f"no Dixon series among {len(headers)} DICOM files")
    stations = group_stations(series)
    if len(stations) != expected_stations:
        where = "; ".join(f"{z_text(st)} ({len(st)} series)" for st in stations)
        hint = " (a station is missing)" if len(stations) < expected_stations else ""
        raise ParticipantExcluded(
            f"{len(stations)} stations found, expected {expected_stations}{hint}: {where}"
        )
    volumes = []
    for index, station in enumerate(stations, start=1):
        chosen, repeat_warnings = select_acquisitions(station)
        volume = station_volume(index, chosen, contrasts)
        volume.notes[:0] = [f"station {index}: {w}" for w in repeat_warnings]
        warnings += volume.notes
        volumes.append(volume)
    return volumes, warnings
