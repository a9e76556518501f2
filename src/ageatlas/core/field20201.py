"""Facts about the UK Biobank field-20201 layout (neck-to-knee Dixon MRI).

Shared by the reader (`ageatlas.ingest.reader`) and the synthetic writer
(`ageatlas.synthetic.dicom`), so both agree on one description of the real format.
Sources: docs/sources.md, "The field-20201 format".
"""

from __future__ import annotations

from dataclasses import dataclass

#: Dixon contrasts in the order they appear within a station (SeriesNumber order).
CONTRASTS: tuple[str, ...] = ("in", "opp", "F", "W")

#: Contrasts the stitcher writes by default; in/opp are optional.
DEFAULT_CONTRASTS: tuple[str, ...] = ("W", "F")

#: UK Biobank data field of the Dixon neck-to-knee zips.
FIELD_ID = 20201

#: Nominal in-plane pixel spacing (mm) of all stations.
PIXEL_SPACING_MM = 2.2321429252625


@dataclass(frozen=True)
class StationSpec:
    """Nominal acquisition geometry of one station."""

    index: int  # 1 (neck) .. 6 (knees), head to foot
    columns: int  # DICOM Columns (left-right)
    rows: int  # DICOM Rows (anterior-posterior)
    slices: int
    slice_spacing_mm: float
    breath_hold: bool

    @property
    def description_prefix(self) -> str:
        return "Dixon_BH_17s_" if self.breath_hold else "Dixon_noBH_"


#: The six stations, head to foot (docs/sources.md, "The field-20201 format").
STATIONS: tuple[StationSpec, ...] = (
    StationSpec(1, 224, 168, 64, 3.0, False),
    StationSpec(2, 224, 174, 44, 4.5, True),
    StationSpec(3, 224, 174, 44, 4.5, True),
    StationSpec(4, 224, 174, 44, 4.5, True),
    StationSpec(5, 224, 162, 72, 3.5, False),
    StationSpec(6, 224, 156, 64, 4.0, False),
)


def zip_name(eid: int | str, instance: int = 2, array: int = 0) -> str:
    """File name UK Biobank gives a participant's field-20201 zip."""
    return f"{eid}_{FIELD_ID}_{instance}_{array}.zip"


def series_description(station: StationSpec, contrast: str) -> str:
    """SeriesDescription of a contrast series in a station, e.g. Dixon_noBH_W."""
    return station.description_prefix + contrast
