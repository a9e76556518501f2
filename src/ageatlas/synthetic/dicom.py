"""One participant's field-20201 zip: the acquired series as DICOM slices, plus a manifest.

UK Biobank images cannot be shipped, so the synthetic cohort is written in exactly the layout the
pipeline meets in real data (docs/sources.md). Everything written is labelled
synthetic (InstitutionName and Manufacturer "ageatlas synthetic").

``{eid}_20201_2_0.zip`` holds, flat at its root, one DICOM file per 2D slice named after its
SOPInstanceUID (hash-derived, so names say nothing about series order), in shuffled member order,
plus a manifest named ``manifest.csv`` or, for about half the participants, ``manifest.cvs``. The
manifest has the columns ``filename,date,patientid,modality,seriesid,series discription`` (sic)
and an unquoted date such as ``Aug 30, 2015``: every row has one field more than the header, as
in the real files.

Six stations x four Dixon contrasts make 24 series, SeriesNumber 1..24, in the order in, opp, F,
W within a station (``layout.CONTRASTS``), described ``Dixon_noBH_*`` (stations 1, 5, 6) or
``Dixon_BH_17s_*`` (2-4). Matrices and slice spacings are the real ones (``layout.STATIONS``);
columns run along patient left (+x, LPS), rows along posterior (+y), ImageOrientationPatient is
axial ``[1,0,0,0,1,0]`` and the first pixel sits at ``-FOV/2`` in x and y, as in the real example
``[-250.00000762939, -187.50000572205, -79.5]``. InstanceNumber 1 is the most superior slice of
a station. Slab positions and ``scale``: :mod:`ageatlas.synthetic.acquisition`. Pixels are
12-bit values in 16-bit words (0..4095), written by pydicom with an Explicit VR Little Endian
file meta header. Defects: :mod:`ageatlas.synthetic.defects`.
"""

from __future__ import annotations

import datetime as dt
import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from ageatlas.core import field20201 as layout
from ageatlas.synthetic.acquisition import (
    FOLD_SLICES,
    STATION_INTERVAL_S,
    Series,
    contrasts,
    motion_corrupt,
    station_grids,
    station_water_fat,
)
from ageatlas.synthetic.anatomy import Body
from ageatlas.synthetic.defects import (
    apply_series_defects,
    check_defects,
    defect_station,
    seed_or_zero,
)
from ageatlas.synthetic.participants import SyntheticParticipant

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_ECHO_TIME_MS = {"in": 4.77, "opp": 2.39, "F": 4.77, "W": 4.77}  # UKBB 1.5 T Dixon echoes


@dataclass
class _Session:
    """Study date, start time and UIDs of one participant's scan, all drawn from (seed, eid)."""

    participant: SyntheticParticipant
    seed: int
    date: dt.date = field(init=False)
    start_s: float = field(init=False)

    def __post_init__(self):
        rng = np.random.default_rng([self.seed, self.participant.eid, 4])
        self.date = dt.date(2014, 5, 1) + dt.timedelta(days=int(rng.integers(0, 6 * 365)))
        self.start_s = float(rng.uniform(8 * 3600, 18 * 3600))

    def uid(self, *parts) -> str:
        # pydicom hashes the concatenated sources: join with a separator so
        # ("sop", 1, 23) != ("sop", 12, 3)
        key = "|".join(map(str, ("ageatlas synthetic", self.seed, self.participant.eid, *parts)))
        return generate_uid(entropy_srcs=[key])


def _acquire(
    p: SyntheticParticipant, scale: float, seed: int, defects: frozenset[str], session: _Session
):
    body = Body(p)
    n_fold = max(1, round(FOLD_SLICES * scale))
    repeat = defect_station(p, "repeat_station", seed) if "repeat_station" in defects else None
    series: list[Series] = []
    for g in station_grids(scale):
        k = g.spec.index
        rng = np.random.default_rng([seed, p.eid, 1, k])
        water, fat = station_water_fat(body, g, rng, n_fold)
        images = contrasts(water, fat, rng)
        t0 = session.start_s + (k - 1) * STATION_INTERVAL_S
        if k == repeat:  # first acquisition corrupted; the clean repeat comes last
            bad_rng = np.random.default_rng([seed, p.eid, 1, k, 1])
            bad = contrasts(motion_corrupt(water, g.rows), motion_corrupt(fat, g.rows), bad_rng)
            t_repeat = session.start_s + 6 * STATION_INTERVAL_S + 40.0
            for c, contrast in enumerate(layout.CONTRASTS):
                series.append(Series(g, contrast, 25 + c, t_repeat + c, images[contrast]))
            images = bad
        for c, contrast in enumerate(layout.CONTRASTS):
            series.append(Series(g, contrast, 4 * (k - 1) + c + 1, t0 + c, images[contrast]))
    return apply_series_defects(series, p, seed, defects)


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters)."""
    for digits in range(14, 4, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    raise ValueError(value)


def _tm(seconds: float) -> str:
    """DICOM TM (HHMMSS.ffffff); rounded to whole microseconds first so 59.9999996 s never prints as
    60."""
    us = round(seconds * 1e6) % (86400 * 10**6)
    h, rem = divmod(us, 3600 * 10**6)
    m, rem = divmod(rem, 60 * 10**6)
    return f"{h:02d}{m:02d}{rem // 10**6:02d}.{rem % 10**6:06d}"


def _series_dataset(s: Series, session: _Session) -> Dataset:
    p, g = session.participant, s.grid
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "DIS2D"]
    ds.SOPClassUID = MRImageStorage
    date = session.date.strftime("%Y%m%d")
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
    ds.StudyTime = _tm(session.start_s)
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = _tm(s.time_s)
    ds.Modality = "MR"
    ds.Manufacturer = ds.InstitutionName = "ageatlas synthetic"
    ds.ManufacturerModelName = "synthetic phantom"
    ds.StudyDescription = "ageatlas synthetic neck-to-knee Dixon"
    ds.SeriesDescription = s.description
    ds.PatientName = f"synthetic^{p.eid}"
    ds.PatientID = str(p.eid)
    ds.PatientSex = "M" if p.sex == 1 else "F"
    ds.ScanningSequence, ds.SequenceVariant, ds.MRAcquisitionType = "GR", "SP", "3D"
    ds.SliceThickness = ds.SpacingBetweenSlices = _ds(g.dz)
    ds.RepetitionTime, ds.EchoTime, ds.FlipAngle = "6.69", _ds(_ECHO_TIME_MS[s.contrast]), "10"
    ds.MagneticFieldStrength = "1.5"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = session.uid("study")
    ds.SeriesInstanceUID = session.uid("series", s.number)
    ds.StudyID = "1"
    ds.SeriesNumber = s.number
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = [_ds(v) for v in s.orientation]
    ds.FrameOfReferenceUID = session.uid("frame of reference")
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = g.rows, g.columns
    ds.PixelSpacing = [_ds(g.dy), _ds(g.dx)]  # row spacing, column spacing
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if int(pydicom.__version__.split(".")[0]) < 3:  # pydicom 2 needs the encoding spelled out
        ds.is_little_endian, ds.is_implicit_VR = True, False
    return ds


def _dicom_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    try:
        pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    except TypeError:  # pydicom < 3
        pydicom.dcmwrite(buf, ds, write_like_original=False)
    return buf.getvalue()


def _render(series: list[Series], session: _Session) -> tuple[list[tuple[str, bytes]], list[str]]:
    """DICOM members (name, bytes) and manifest rows, one per slice."""
    members, rows = [], []
    d = session.date
    date = (
        f"{_MONTHS[d.month - 1]} {d.day}, {d.year}"  # "Aug 30, 2015", unquoted as in the real files
    )
    for s in series:
        ds = _series_dataset(s, session)
        x0, y0 = s.grid.x[0], s.grid.y[0]
        for k in range(s.pixels.shape[2]):
            uid = session.uid("sop", s.number, k)
            z = s.grid.z[k]
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
            ds.InstanceNumber = k + 1
            ds.ImagePositionPatient = [_ds(x0), _ds(y0), _ds(z)]
            ds.SliceLocation = _ds(z)
            ds.PixelData = np.ascontiguousarray(s.pixels[:, :, k].T).tobytes()
            name = f"{uid}.dcm"
            members.append((name, _dicom_bytes(ds)))
            rows.append(
                f"{name},{date},{session.participant.eid},MR,{ds.SeriesInstanceUID},{s.description}"
            )
    return members, rows


def _manifest_name(p: SyntheticParticipant, seed: int, defects: frozenset[str]) -> str:
    misspelled = np.random.default_rng([seed, p.eid, 3]).integers(2) == 1
    return "manifest.cvs" if misspelled or "manifest_cvs" in defects else "manifest.csv"


def _members(
    p: SyntheticParticipant, scale: float, seed: int, defects: frozenset[str]
) -> list[tuple[str, bytes]]:
    session = _Session(p, seed)
    members, rows = _render(_acquire(p, scale, seed, defects, session), session)
    rng = np.random.default_rng([seed, p.eid, 5])
    if "no_manifest" not in defects:
        if "garbled_manifest" in defects:
            text = rng.integers(0, 256, 2048, dtype=np.uint8).tobytes()
        else:
            header = "filename,date,patientid,modality,seriesid,series discription"
            text = ("\n".join([header, *rows]) + "\n").encode()
        members.append((_manifest_name(p, seed, defects), text))
    if "non_dicom_member" in defects:
        members.append(
            (f"{session.uid('stray')}.dcm", b"ageatlas synthetic: this member is not DICOM\n")
        )
    if "path_traversal_member" in defects:
        members.append(
            ("../evil.dcm", b"ageatlas synthetic: a member that escapes the extraction folder\n")
        )
    order = rng.permutation(len(members))  # zip order says nothing about series order
    return [members[i] for i in order]


def _zip_bytes(members: list[tuple[str, bytes]], when: dt.date) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(when.year, when.month, when.day, 12, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data, compresslevel=1)
    return buf.getvalue()


def write_participant_zip(
    path: str | Path,
    participant: SyntheticParticipant,
    *,
    scale: float = 1.0,
    defects: Sequence[str] = (),
    seed: int | None = None,
) -> None:
    """Write one participant's field-20201 zip (see the module docstring); ``seed`` None means 0."""
    defects, seed = check_defects(defects), seed_or_zero(seed)
    path = Path(path)
    if "zero_bytes" in defects:
        path.write_bytes(b"")
        return
    members = [] if "empty_zip" in defects else _members(participant, scale, seed, defects)
    data = _zip_bytes(members, _Session(participant, seed).date)
    if "truncated_zip" in defects:
        data = data[: len(data) // 2]
    path.write_bytes(data)


__all__ = [
    "write_participant_zip",
]
