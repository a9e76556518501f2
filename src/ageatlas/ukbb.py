"""Read one participant's field-20201 zip into station volumes.

The zip is read in memory, never extracted: member names are never used as
paths, and unsafe ones (``../x``, absolute, control characters) are not even
opened. Declared sizes in the central directory are checked against
`ZipLimits` before any member is decompressed (zipfile never returns more
than the declared size, so the check bounds memory).

Everything is derived from DICOM tags, never from member names, file order or
the manifest (its header "can not be relied on", see ukbb-format.md, so it is
skipped). Steps:

1. `scan_zip`: parse every member's header only (pydicom, ``stop_before_pixels``)
   and keep the undecoded bytes of members whose contrast was requested.
2. `group_series`: slices -> series (SeriesInstanceUID, SeriesNumber,
   SeriesDescription, SeriesTime), one orientation checked, sorted along the
   slice normal.
3. `group_stations`: series whose slice ranges intersect by more than half
   their union are one station (a repeat overlaps fully, neighbours by a few
   cm); stations sorted head to foot.
4. `select_acquisitions`: one series per contrast, the latest when repeated.
5. `station_volume`: check the grid, crop contrasts to their common slices,
   decode pixels and build the RAS affine.

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

Header values are decoded from the raw element bytes rather than through
pydicom's value conversion, and standard files skip dcmread's file-meta
set-up: together that halves the cost of a read.
"""

from __future__ import annotations

import re
import zipfile
import zlib
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from .layout import CONTRASTS, DEFAULT_CONTRASTS, STATIONS
from .qc import ParticipantExcluded
from .volume import StationVolume

__all__ = [
    "ZipLimits",
    "SliceHeader",
    "Series",
    "contrast_of",
    "check_zip_limits",
    "scan_zip",
    "group_series",
    "check_orientation",
    "group_stations",
    "select_acquisitions",
    "station_affine",
    "station_volume",
    "read_participant",
]

MANIFEST_NAMES = {"manifest.csv", "manifest.cvs"}  # the misspelling is real
CONTRAST_NAMES = {"in": "in-phase", "opp": "opposed-phase", "F": "fat", "W": "water"}

#: A station's contrasts may differ by at most this many slices (43 of 44 is known).
MAX_CROPPED_SLICES = 2
#: Direction cosines that differ by less than this are the same orientation.
ORIENTATION_TOL = 1e-3
#: Slice positions closer than this (mm) along the normal are duplicates.
DUPLICATE_TOL_MM = 1e-2
#: Allowed deviation of a slice from the regular grid, as a fraction of the step.
SPACING_TOL = 0.01
#: Largest angle (degrees) between the slice step and the normal: no gantry tilt in 20201.
MAX_TILT_DEG = 1.0

_HEADER_PROBE = 4 << 10  # bytes read first; grows to fit the headers seen so far
_PIXEL_TAG_LE = b"\xe0\x7f\x10\x00"
_PIXEL_TAG_BE = b"\x7f\xe0\x00\x10"
_LONG_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"SQ", b"UT", b"UC", b"UR"}
_T = {  # BaseTag keys, so Dataset.get_item skips its Tag() conversion
    k: Tag(tag_for_keyword(k))
    for k in (
        "SOPInstanceUID ImageType SeriesTime SeriesDescription SeriesInstanceUID "
        "SeriesNumber ImagePositionPatient ImageOrientationPatient "
        "SamplesPerPixel NumberOfFrames Rows Columns PixelSpacing BitsAllocated "
        "PixelRepresentation RescaleIntercept RescaleSlope"
    ).split()
}
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError,
               NotImplementedError, ValueError)


@dataclass(frozen=True)
class ZipLimits:
    """Refuse a zip whose central directory declares more than this."""

    max_total_bytes: int = 1 << 30  # declared uncompressed size of all members
    max_member_bytes: int = 16 << 20
    max_members: int = 10000
    max_ratio: float = 200.0  # uncompressed/compressed, per member (zip bomb)
    # Smaller members skip the ratio test: a blank 80 kB slice deflates > 200:1.
    ratio_min_bytes: int = 1 << 20


@dataclass(eq=False)
class SliceHeader:
    """What the reader needs from one DICOM slice (geometry in DICOM LPS mm)."""

    member: str
    series_uid: str
    series_number: int | None
    description: str
    series_time: str
    contrast: str | None
    sop_uid: str = ""
    position: tuple[float, float, float] | None = None
    orientation: tuple[float, ...] | None = None  # row then column direction cosines
    pixel_spacing: tuple[float, float] | None = None  # (between rows, between columns)
    rows: int = 0
    columns: int = 0
    bits_allocated: int = 16
    signed: bool = False
    slope: float = 1.0
    intercept: float = 0.0
    frames: int = 1
    samples: int = 1
    little_endian: bool = True
    implicit_vr: bool = False
    data: bytes | None = None  # whole member, kept only for requested contrasts
    pixel_offset: int = -1  # where the Pixel Data element starts in ``data``

    @property
    def series_key(self) -> tuple:
        return (self.series_uid, self.series_number, self.description, self.series_time,
                self.contrast)


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


# --------------------------------------------------------------------------- zip


def check_zip_limits(infos: Sequence[zipfile.ZipInfo], limits: ZipLimits) -> None:
    """Raise ParticipantExcluded if the declared sizes look like a zip bomb."""
    if len(infos) > limits.max_members:
        raise ParticipantExcluded(
            f"zip bomb? {len(infos)} members (limit {limits.max_members})")
    total = sum(i.file_size for i in infos)
    if total > limits.max_total_bytes:
        raise ParticipantExcluded(
            f"zip bomb? members declare {total} bytes uncompressed "
            f"(limit {limits.max_total_bytes})")
    for info in infos:
        if info.file_size > limits.max_member_bytes:
            raise ParticipantExcluded(
                f"zip bomb? member {info.filename!r} declares {info.file_size} bytes "
                f"(limit {limits.max_member_bytes})")
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size >= limits.ratio_min_bytes and ratio > limits.max_ratio:
            raise ParticipantExcluded(
                f"zip bomb? member {info.filename!r} expands {ratio:.0f}:1 "
                f"(limit {limits.max_ratio:.0f}:1)")


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        size = path.stat().st_size
    except OSError as err:
        raise ParticipantExcluded(f"cannot read the file ({err.strerror or err})") from None
    if size == 0:
        raise ParticipantExcluded("0-byte file")
    try:
        return zipfile.ZipFile(path)
    except _ZIP_ERRORS as err:
        try:
            with open(path, "rb") as fh:
                magic = fh.read(4)
        except OSError:
            magic = b""
        if magic == b"PK\x03\x04":
            raise ParticipantExcluded(
                f"truncated or damaged zip, no readable central directory ({err})") from None
        raise ParticipantExcluded(f"not a zip file (starts with {magic!r}; {err})") from None


def _unsafe_name(name: str) -> bool:
    """Absolute, parent-relative, drive-letter or control-character names."""
    parts = name.replace("\\", "/").split("/")
    return (name.startswith(("/", "\\")) or ".." in parts or any(ord(ch) < 32 for ch in name)
            or re.match(r"[A-Za-z]:", name) is not None)


def _is_manifest(name: str) -> bool:
    return name.replace("\\", "/").rsplit("/", 1)[-1].lower() in MANIFEST_NAMES


# ------------------------------------------------------------------ DICOM headers


def _raw(ds, keyword: str):
    elem = ds.get_item(_T[keyword])
    return None if elem is None else elem.value


def _text(ds, keyword: str) -> str:
    value = _raw(ds, keyword)
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("latin-1").strip(" \x00")
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _floats(ds, keyword: str, n: int) -> tuple[float, ...] | None:
    text = _text(ds, keyword)
    if not text:
        return None
    values = tuple(float(v) for v in text.split("\\"))
    if len(values) != n or not all(np.isfinite(values)):
        raise ValueError(f"{keyword} is {text!r}, expected {n} finite numbers")
    return values


def _required_floats(ds, keyword: str, n: int) -> tuple[float, ...]:
    values = _floats(ds, keyword, n)
    if values is None:
        raise ValueError(f"no {keyword}")
    return values


def _binary_int(ds, keyword: str, default: int, little: bool) -> int:
    """A US value (Rows, BitsAllocated, ...), also when a writer stored it as text."""
    elem = ds.get_item(_T[keyword])
    if elem is None or elem.value in (None, b""):
        return default
    value = elem.value
    if isinstance(value, bytes):
        if elem.VR in ("IS", "DS", "LO", "SH", "CS"):
            return int(float(value.decode("latin-1")))
        return int.from_bytes(value[:2], "little" if little else "big")
    return int(value[0] if isinstance(value, (list, tuple, MultiValue)) else value)


def _string_int(ds, keyword: str) -> int | None:
    text = _text(ds, keyword)
    return int(float(text)) if text else None


def contrast_of(description: str, image_type: str = "") -> str | None:
    """Dixon contrast ("in", "opp", "F", "W") from SeriesDescription, else ImageType.

    The description's last contrast-like word wins (``Dixon_noBH_W``,
    ``DIXON_BH_17S_opp``, ``Dixon_in_phase``); ImageType items such as
    ``WATER`` or ``OPP_PHASE`` (Siemens derived Dixon) are the fallback.
    """
    words = {"w": "W", "water": "W", "wat": "W", "f": "F", "fat": "F",
             "in": "in", "ip": "in", "inphase": "in",
             "opp": "opp", "op": "opp", "oop": "opp", "out": "opp", "opposed": "opp",
             "outphase": "opp", "oppphase": "opp"}
    for token in reversed(re.split(r"[^a-z0-9]+", description.lower())):
        if token in words:
            return words[token]
    items = {"W": "W", "WATER": "W", "F": "F", "FAT": "F", "IN_PHASE": "in", "IP": "in",
             "OUT_PHASE": "opp", "OPP_PHASE": "opp", "OP": "opp", "OPP": "opp"}
    for item in reversed(image_type.upper().split("\\")):
        if item.strip() in items:
            return items[item.strip()]
    return None


def _slice_header(member: str, ds, little: bool, implicit: bool) -> SliceHeader:
    """Header fields of one parsed member; geometry only for Dixon slices."""
    description = _text(ds, "SeriesDescription")
    head = SliceHeader(
        member=member,
        series_uid=_text(ds, "SeriesInstanceUID"),
        series_number=_string_int(ds, "SeriesNumber"),
        description=description,
        series_time=_text(ds, "SeriesTime"),
        contrast=contrast_of(description, _text(ds, "ImageType")),
        little_endian=little,
        implicit_vr=implicit,
    )
    if head.contrast is None:
        return head
    head.sop_uid = _text(ds, "SOPInstanceUID")
    head.position, head.orientation, head.pixel_spacing = (
        _required_floats(ds, "ImagePositionPatient", 3),
        _required_floats(ds, "ImageOrientationPatient", 6),
        _required_floats(ds, "PixelSpacing", 2))
    head.rows = _binary_int(ds, "Rows", 0, little)
    head.columns = _binary_int(ds, "Columns", 0, little)
    head.bits_allocated = _binary_int(ds, "BitsAllocated", 16, little)
    head.signed = _binary_int(ds, "PixelRepresentation", 0, little) == 1
    head.samples = _binary_int(ds, "SamplesPerPixel", 1, little)
    head.frames = _string_int(ds, "NumberOfFrames") or 1
    slope, intercept = _floats(ds, "RescaleSlope", 1), _floats(ds, "RescaleIntercept", 1)
    head.slope = slope[0] if slope else 1.0
    head.intercept = intercept[0] if intercept else 0.0
    if head.rows <= 0 or head.columns <= 0 or min(head.pixel_spacing) <= 0:
        raise ValueError(f"bad matrix {head.columns}x{head.rows} or spacing {head.pixel_spacing}")
    if head.frames != 1 or head.samples != 1 or head.bits_allocated not in (8, 16, 32):
        raise ValueError(f"unsupported image: {head.frames} frames, {head.samples} samples "
                         f"per pixel, {head.bits_allocated} bits allocated")
    return head


def _standard_meta(data: bytes) -> tuple[bool, bool, int] | None:
    """(implicit VR, little endian, dataset offset) from a well-formed file meta group."""
    if data[128:138] != b"DICM\x02\x00\x00\x00UL":
        return None
    end = 144 + int.from_bytes(data[140:144], "little")
    at = data.find(b"\x02\x00\x10\x00UI", 144, end)
    if at < 0:
        return None
    size = int.from_bytes(data[at + 6:at + 8], "little")
    uid = data[at + 8:at + 8 + size].rstrip(b"\x00 ").decode("ascii", "replace")
    if uid == "1.2.840.10008.1.2.1.99":  # deflated dataset: let pydicom inflate it
        return None
    # implicit LE and (retired) explicit BE; every other syntax encodes explicit LE
    implicit, little = {"1.2.840.10008.1.2": (True, True),
                        "1.2.840.10008.1.2.2": (False, False)}.get(uid, (False, True))
    return implicit, little, end


_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})  # (float/double) Pixel Data


def _at_pixels(tag, vr, length) -> bool:
    return tag in _PIXEL_TAGS


def _parse(data: bytes, preamble: bool):
    """Header dataset, its encoding and where Pixel Data starts (-1 if not reached).

    A standard file goes straight to `read_dataset`, skipping dcmread's file-meta
    and FileDataset set-up (three quarters of its cost); anything else to dcmread.
    """
    bio = BytesIO(data)
    meta = _standard_meta(data) if preamble else None
    if meta:
        implicit, little, start = meta
        bio.seek(start)
        ds = read_dataset(bio, implicit, little, stop_when=_at_pixels)
    else:
        ds = pydicom.dcmread(bio, stop_before_pixels=True, force=not preamble)
        encoding = getattr(ds, "original_encoding", (None, None))  # pydicom >= 3
        implicit = encoding[0] if encoding[0] is not None else ds.is_implicit_VR
        little = encoding[1] if encoding[1] is not None else ds.is_little_endian
    pos = bio.tell()
    tag = _PIXEL_TAG_LE if little else _PIXEL_TAG_BE
    return ds, bool(implicit), bool(little), (pos if data[pos:pos + 4] == tag else -1)


def _looks_like_dicom(head: bytes) -> tuple[bool, bool]:
    """(is DICOM, has the 128-byte preamble + DICM); preamble-less datasets start
    with a group 0002 or 0008 element."""
    if head[128:132] == b"DICM":
        return True, True
    return len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00"), False


class _Scanner:
    """Reads members one by one; grows the header probe to fit what it meets."""

    def __init__(self, zf: zipfile.ZipFile, wanted: set[str]):
        self.zf, self.wanted, self.probe = zf, wanted, _HEADER_PROBE

    def read(self, info: zipfile.ZipInfo) -> SliceHeader | None:
        """SliceHeader of a member, or None if it is not DICOM."""
        name = info.filename
        try:
            with self.zf.open(info) as fh:
                data = fh.read(self.probe)
                is_dicom, preamble = _looks_like_dicom(data)
                if not is_dicom:
                    return None
                ds, implicit, little, pos, data = self._parse(fh, data, preamble, name)
                try:
                    head = _slice_header(name, ds, little, implicit)
                except (ValueError, TypeError, IndexError) as err:
                    raise ParticipantExcluded(
                        f"member {name!r}: bad DICOM header value ({err})") from None
                if not (head.series_uid or head.description or head.contrast):
                    # every real image has a SeriesInstanceUID: this header is junk
                    raise ParticipantExcluded(f"member {name!r} is a DICOM file that cannot be "
                                              "parsed (no SeriesInstanceUID, no SeriesDescription)")
                if head.contrast in self.wanted:
                    data += fh.read()  # to the end, which also checks the CRC
                    if pos < 0:
                        raise ParticipantExcluded(
                            f"member {name!r} ({head.description!r}) has no Pixel Data")
                    head.data, head.pixel_offset = data, pos
                return head
        except _ZIP_ERRORS as err:
            raise ParticipantExcluded(
                f"member {name!r} cannot be read from the zip ({type(err).__name__}: {err})"
            ) from None

    def _parse(self, fh, data: bytes, preamble: bool, name: str):
        """Parse the probe; if the header did not fit, read the whole member and retry."""
        try:
            ds, implicit, little, pos = _parse(data, preamble)
            if pos >= 0 or len(data) < self.probe:
                return ds, implicit, little, pos, data
        except Exception as err:  # noqa: BLE001 - a header cut by the probe; retried in full
            if len(data) < self.probe:
                raise _unparsable(name, err) from None
        data += fh.read()
        try:
            ds, implicit, little, pos = _parse(data, preamble)
        except Exception as err:  # noqa: BLE001 - pydicom raises many types on bad data
            raise _unparsable(name, err) from None
        if pos >= 0:
            self.probe = max(self.probe, pos + 4096)
        return ds, implicit, little, pos, data


def _unparsable(name: str, err: Exception) -> ParticipantExcluded:
    return ParticipantExcluded(
        f"member {name!r} is a DICOM file that cannot be parsed ({type(err).__name__}: {err})")


def scan_zip(zip_path: str | Path, *, contrasts: Sequence[str] = DEFAULT_CONTRASTS,
             limits: ZipLimits = ZipLimits()) -> tuple[list[SliceHeader], list[str]]:
    """Headers of all DICOM members (pixel bytes kept for ``contrasts``) and warnings."""
    warnings: list[str] = []
    unsafe, non_dicom = [], []
    with _open_zip(Path(zip_path)) as zf:
        infos = zf.infolist()
        if not infos:
            raise ParticipantExcluded("empty zip (no members)")
        check_zip_limits(infos, limits)
        scanner = _Scanner(zf, set(contrasts))
        headers = []
        for info in infos:
            name = info.filename
            if info.is_dir() or _is_manifest(name):
                continue
            if _unsafe_name(name):
                unsafe.append(name)
                continue
            head = scanner.read(info)
            if head is None:
                non_dicom.append(name)
            else:
                headers.append(head)
    if unsafe:
        warnings.append(f"ignored {len(unsafe)} member(s) with unsafe path names, never "
                        f"extracted: {_names(unsafe)}")
    if non_dicom:
        warnings.append(f"ignored {len(non_dicom)} non-DICOM member(s): {_names(non_dicom)}")
    return headers, warnings


def _names(names: Sequence[str], shown: int = 5) -> str:
    text = ", ".join(repr(n) for n in names[:shown])
    return text + (f" and {len(names) - shown} more" if len(names) > shown else "")


# ------------------------------------------------------------------ series/stations


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
        "slices): not a Dixon in/opp/F/W series" for key, members in ignored.items()
    ]
    series = [Series(contrast=key[4], number=key[1], description=key[2], uid=key[0], time=key[3],
                     slices=list(members)) for key, members in groups.items()]
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
                f"({_fmt(orientation)} in {series.slices[0].member!r}, {_fmt(s.orientation)} "
                f"in {s.member!r})")
    if not _orthonormal(orientation):
        raise ParticipantExcluded(
            f"{series.label}: ImageOrientationPatient {_fmt(orientation)} is not orthonormal")


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
                f"{series.label}: slices at {_fmt(prev.position)} and {_fmt(s.position)} lie in "
                f"one plane of ImageOrientationPatient {_fmt(series.orientation)}: orientation and "
                "positions disagree")
        elif s.sop_uid and s.sop_uid == prev.sop_uid:
            dropped.append(s.member)
        else:
            raise ParticipantExcluded(
                f"{series.label}: two different slices at the same position "
                f"{_fmt(s.position)} ({prev.member!r}, {s.member!r})")
    series.slices = kept
    if dropped:
        return [f"{series.label}: dropped {len(dropped)} duplicate slice(s) "
                f"(same SOPInstanceUID): {_names(dropped)}"]
    return []


def _orthonormal(o: np.ndarray) -> bool:
    return (abs(np.linalg.norm(o[:3]) - 1) < ORIENTATION_TOL
            and abs(np.linalg.norm(o[3:]) - 1) < ORIENTATION_TOL
            and abs(np.dot(o[:3], o[3:])) < ORIENTATION_TOL)


def _fmt(values) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in values) + "]"


def check_orientation(series: Sequence[Series]) -> None:
    """All Dixon series of a participant must share one ImageOrientationPatient."""
    votes = Counter(tuple(np.round(s.orientation, 3)) for s in series)
    common = np.array(votes.most_common(1)[0][0])  # so the message names the odd ones out
    odd = sorted((s for s in series if np.abs(s.orientation - common).max() > ORIENTATION_TOL),
                 key=lambda s: s.number if s.number is not None else -1)
    if odd:
        raise ParticipantExcluded(
            f"inconsistent ImageOrientationPatient between series: {_fmt(odd[0].orientation)} in "
            f"{', '.join(s.label for s in odd[:4])}{' ...' if len(odd) > 4 else ''}; "
            f"{_fmt(common)} in {len(series) - len(odd)} other series")


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


def _z_text(station: Sequence[Series]) -> str:
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
        warnings.append(f"acquired more than once ({_z_text(station)}); kept the later series "
                        f"({'; '.join(replaced)})")
    return chosen, warnings


# ------------------------------------------------------------------ station volume


def _check_series_grid(series: Series) -> np.ndarray:
    """Validate in-plane grid and slice spacing of one series; return its step vector."""
    first = series.slices[0]
    for s in series.slices:
        if (s.rows, s.columns) != (first.rows, first.columns) or not np.allclose(
                s.pixel_spacing, first.pixel_spacing, rtol=1e-4, atol=1e-6):
            raise ParticipantExcluded(
                f"{series.label}: slices differ in matrix or pixel spacing ({first.member!r} "
                f"{first.columns}x{first.rows} {first.pixel_spacing}, {s.member!r} "
                f"{s.columns}x{s.rows} {s.pixel_spacing})")
    n = len(series.slices)
    if n < 2:
        raise ParticipantExcluded(f"{series.label}: only {n} slice")
    pos = series.positions
    step = (pos[-1] - pos[0]) / (n - 1)
    tilt = np.degrees(np.arccos(min(1.0, abs(np.dot(step, series.normal)) / np.linalg.norm(step))))
    if tilt > MAX_TILT_DEG:
        raise ParticipantExcluded(
            f"{series.label}: slices advance at {tilt:.1f} degrees to the slice normal "
            "(sheared stack or ImageOrientationPatient not matching the positions)")
    off_grid = np.linalg.norm(pos - (pos[0] + np.outer(np.arange(n), step)), axis=1).max()
    if off_grid > SPACING_TOL * np.linalg.norm(step) + 1e-3:
        gaps = np.linalg.norm(np.diff(pos, axis=0), axis=1)
        raise ParticipantExcluded(
            f"{series.label}: slice spacing not uniform ({gaps.min():.3g} to {gaps.max():.3g} mm"
            f"{'; a slice missing inside the stack?' if gaps.max() > 1.5 * gaps.min() else ''})")
    return step


def _common_slices(chosen: Mapping[str, Series], contrasts: Sequence[str]
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
        if ((head.rows, head.columns) != (first.rows, first.columns)
                or not np.allclose(head.pixel_spacing, first.pixel_spacing, rtol=1e-4)
                or np.linalg.norm(step - ref_step) > SPACING_TOL * step_len
                or misfit > SPACING_TOL * step_len + 1e-3):
            raise ParticipantExcluded(
                f"{s.label} and {ref.label} of one station are not on the same grid "
                f"({head.columns}x{head.rows}x{len(s.slices)} at {_fmt(s.positions[0])} step "
                f"{_fmt(step)} vs {first.columns}x{first.rows}x{len(ref.slices)} at {_fmt(ref0)} "
                f"step {_fmt(ref_step)})")
        ranges[c] = (start, start + len(s.slices))
    lo, hi = max(r[0] for r in ranges.values()), min(r[1] for r in ranges.values())
    longest = max(len(chosen[c].slices) for c in contrasts)
    if hi - lo < longest - MAX_CROPPED_SLICES or hi - lo < 2:
        raise ParticipantExcluded(
            f"contrasts {', '.join(contrasts)} share only {max(hi - lo, 0)} of {longest} slices")
    cuts = {c: slice(lo - r[0], hi - r[0]) for c, r in ranges.items()}
    notes = []
    if any(len(chosen[c].slices) != hi - lo for c in contrasts):
        counts = ", ".join(f"{c} {len(chosen[c].slices)}" for c in contrasts)
        notes.append(f"cropped {', '.join(contrasts)} to their {hi - lo} common slices "
                     f"(slices per contrast: {counts})")
    return cuts, notes


def _short_series_notes(chosen: Mapping[str, Series]) -> list[str]:
    most = max(len(s.slices) for s in chosen.values())
    return [f"{s.label} has {len(s.slices)} slices, {most} in the longest series of its station"
            for s in chosen.values() if len(s.slices) < most]


def _pixel_value(head: SliceHeader) -> tuple[int, int]:
    """(start, length) of the Pixel Data value in ``head.data``; length -1 if encapsulated."""
    data, pos = head.data, head.pixel_offset
    order = "little" if head.little_endian else "big"
    if head.implicit_vr:
        return pos + 8, int.from_bytes(data[pos + 4:pos + 8], order)
    if data[pos + 4:pos + 6] in _LONG_VRS:
        return pos + 12, int.from_bytes(data[pos + 8:pos + 12], order)
    return pos + 8, int.from_bytes(data[pos + 6:pos + 8], order)


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
            f"x {nbytes} = {expected}")
    dtype = np.dtype(f"{'<' if head.little_endian else '>'}{'i' if head.signed else 'u'}{nbytes}")
    return np.frombuffer(head.data, dtype, head.rows * head.columns, start).reshape(
        head.rows, head.columns)


def _decode_encapsulated(head: SliceHeader, series: Series) -> np.ndarray:
    """Compressed pixel data: let pydicom (and whatever plugins exist) decode it."""
    try:
        array = pydicom.dcmread(BytesIO(head.data), force=True).pixel_array
    except Exception as err:  # noqa: BLE001 - decoder plugins raise anything
        raise ParticipantExcluded(
            f"member {head.member!r} ({series.label}): compressed pixel data cannot be decoded "
            f"({type(err).__name__}: {err})") from None
    if array.shape != (head.rows, head.columns):
        raise ParticipantExcluded(
            f"member {head.member!r} ({series.label}): decoded pixel data has shape "
            f"{array.shape}, expected ({head.rows}, {head.columns})")
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


def station_volume(index: int, chosen: Mapping[str, Series],
                   contrasts: Sequence[str] = DEFAULT_CONTRASTS) -> StationVolume:
    """Decode one station's requested contrasts onto one grid (notes say what was tolerated)."""
    try:
        missing = [c for c in contrasts if c not in chosen]
        if missing:
            raise ParticipantExcluded(
                "no " + " and no ".join(f"{c} ({CONTRAST_NAMES[c]})" for c in missing) + " series")
        notes = _short_series_notes(chosen)
        cuts, crop_notes = _common_slices(chosen, contrasts)
        images = {c: _decode(chosen[c], cuts[c]) for c in contrasts}
    except ParticipantExcluded as err:
        raise ParticipantExcluded(
            f"station {index} ({_z_text(list(chosen.values()))}): {err}") from None
    geometry = chosen[contrasts[0]]
    return StationVolume(index=index, images=images,
                         affine=station_affine(geometry, cuts[contrasts[0]]),
                         series_time=geometry.time,
                         notes=[f"station {index}: {n}" for n in notes + crop_notes])


# ------------------------------------------------------------------ participant


def read_participant(zip_path: str | Path, *, contrasts: Sequence[str] = DEFAULT_CONTRASTS,
                     limits: ZipLimits = ZipLimits(), expected_stations: int = len(STATIONS)
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
        where = "; ".join(f"{_z_text(st)} ({len(st)} series)" for st in stations)
        hint = " (a station is missing)" if len(stations) < expected_stations else ""
        raise ParticipantExcluded(
            f"{len(stations)} stations found, expected {expected_stations}{hint}: {where}")
    volumes = []
    for index, station in enumerate(stations, start=1):
        chosen, repeat_warnings = select_acquisitions(station)
        volume = station_volume(index, chosen, contrasts)
        volume.notes[:0] = [f"station {index}: {w}" for w in repeat_warnings]
        warnings += volume.notes
        volumes.append(volume)
    return volumes, warnings
