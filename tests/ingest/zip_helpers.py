"""Tiny field-20201 zips for the reader's tests, written here with pydicom.

Written independently of ageatlas.synthetic (a second generator checks the
reader against the format, not against one writer's habits). Geometry is
checked against DICOM's own definition and against dcm2niix.
"""

from __future__ import annotations

import copy
import io
import random
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from ageatlas.core.field20201 import CONTRASTS, PIXEL_SPACING_MM
from ageatlas.core.qc import ParticipantExcluded
from ageatlas.ingest.reader import read_participant

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
# ~10 degrees about the left-right axis: still one orientation for all stations
OBLIQUE = (1.0, 0.0, 0.0, 0.0, float(np.cos(0.17)), float(-np.sin(0.17)))
# (rows, slices, slice spacing): the six stations, shrunk; columns are 12 everywhere
SMALL = ((9, 7, 3.0), (10, 5, 4.5), (10, 5, 4.5), (10, 5, 4.5), (8, 8, 3.5), (7, 7, 4.0))
COLUMNS = 12
# Real data are isotropic in plane (field20201.PIXEL_SPACING_MM); distinct values catch a swap.
ROW_MM, COL_MM = PIXEL_SPACING_MM, 2.0  # PixelSpacing = (between rows, between columns)
OVERLAP = 2  # slices shared by neighbouring stations


@dataclass
class Scan:
    """Slices of a small participant and the pixels each station/contrast must give."""

    datasets: list[Dataset]
    truth: dict[tuple[int, str], np.ndarray]  # (station, contrast) -> (slice, row, col), head first


def _slice(
    contrast,
    k,
    pixels,
    *,
    z,
    orientation,
    spacing,
    series_uid,
    series_number,
    series_time,
    study_uid,
    frame_uid,
):
    rows, cols = pixels.shape
    x_dir, y_dir = np.array(orientation[:3]), np.array(orientation[3:])
    normal = np.cross(x_dir, y_dir)
    centre = np.array([0.0, 0.0, z])
    corner = centre - x_dir * cols * COL_MM / 2 - y_dir * rows * ROW_MM / 2
    position = corner - normal * k * spacing  # k counts head to foot
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Manufacturer = "MR", "TEST"
    ds.PatientName, ds.PatientID = "anon", "1000001"
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = "20150830"
    ds.StudyTime, ds.SeriesTime, ds.AcquisitionTime = "110000", series_time, series_time
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.FrameOfReferenceUID = frame_uid
    ds.SeriesNumber, ds.InstanceNumber, ds.AcquisitionNumber = series_number, k + 1, 1
    ds.SeriesDescription = ("Dixon_BH_17s_" if spacing == 4.5 else "Dixon_noBH_") + contrast
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "DIS2D"]
    ds.ImagePositionPatient = [round(float(v), 6) for v in position]
    ds.ImageOrientationPatient = [round(float(v), 8) for v in orientation]
    ds.PixelSpacing = [ROW_MM, COL_MM]
    ds.SliceThickness = spacing
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    return ds


def build_scan(
    seed=0, *, orientation=AXIAL, stations=SMALL, series_time="1200{:02d}.000000", first_series=1
) -> Scan:
    """Six stations x four contrasts, stations overlapping by OVERLAP slices."""
    rng = np.random.default_rng(seed)
    study, frame = generate_uid(), generate_uid()
    datasets, truth, z = [], {}, 300.0
    for s, (rows, n, spacing) in enumerate(stations, start=1):
        for c, contrast in enumerate(CONTRASTS):
            number = first_series + 4 * (s - 1) + c
            pixels = rng.integers(0, 1000, (n, rows, COLUMNS), dtype=np.uint16)
            truth[(s, contrast)] = pixels
            uid = generate_uid()
            datasets += [
                _slice(
                    contrast,
                    k,
                    pixels[k],
                    z=z,
                    orientation=orientation,
                    spacing=spacing,
                    series_uid=uid,
                    series_number=number,
                    series_time=series_time.format(number),
                    study_uid=study,
                    frame_uid=frame,
                )
                for k in range(n)
            ]
        z -= (n - OVERLAP) * spacing
    return Scan(datasets, truth)


def dicom_bytes(ds: Dataset, implicit: bool = False, preamble: bool = True) -> bytes:
    """A file as pydicom writes it, or (no preamble) the bare dataset some writers produce."""
    if not preamble:
        fp = DicomBytesIO()
        fp.is_little_endian, fp.is_implicit_VR = True, implicit
        write_dataset(fp, ds)
        return fp.getvalue()
    if implicit:  # on a copy: the caller's dataset keeps its transfer syntax
        ds = copy.copy(ds)
        ds.file_meta = copy.deepcopy(ds.file_meta)
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    bio = io.BytesIO()
    pydicom.dcmwrite(bio, ds, enforce_file_format=True)
    return bio.getvalue()


def write_zip(
    path: Path,
    datasets,
    *,
    extra=(),
    manifest=True,
    seed=0,
    compression=zipfile.ZIP_DEFLATED,
    encode=dicom_bytes,
) -> Path:
    """Members in shuffled order under UID-like names, as UK Biobank ships them."""
    members = [(f"{ds.SOPInstanceUID}.dcm", encode(ds)) for ds in datasets] + list(extra)
    random.Random(seed).shuffle(members)
    with zipfile.ZipFile(path, "w", compression) as zf:
        if manifest:  # unquoted date with a comma, as in the real manifests
            rows = "".join(f"{name},1000001,Aug 30, 2015,Dixon\n" for name, _ in members[:3])
            zf.writestr("manifest.csv", "filename,patientid,date,series discription\n" + rows)
        for name, data in members:
            zf.writestr(name, data)
    return path


def expected_image(scan: Scan, station: int, contrast: str) -> np.ndarray:
    """(columns, rows, slices) with slices ascending along the normal (foot to head)."""
    return scan.truth[(station, contrast)][::-1].transpose(2, 1, 0).astype(np.float32)


def read(path, **kwargs):
    return read_participant(path, **kwargs)


def excluded(path, **kwargs) -> str:
    with pytest.raises(ParticipantExcluded) as info:
        read_participant(path, **kwargs)
    message = str(info.value)
    assert message.startswith(Path(path).name + ": "), message
    return message


def scan_series(scan, station, contrast):
    """The slices of one series of `scan`, as build_scan numbered them."""
    desc = ("Dixon_BH_17s_" if SMALL[station - 1][2] == 4.5 else "Dixon_noBH_") + contrast
    first = 1 + 4 * (station - 1) + CONTRASTS.index(contrast)
    return [ds for ds in scan.datasets if ds.SeriesDescription == desc and ds.SeriesNumber == first]


def dcm2niix() -> str:
    """Path of the dcm2niix binary; skips the test if it is not installed."""
    found = shutil.which("dcm2niix") or str(Path(sys.executable).with_name("dcm2niix"))
    if not Path(found).exists():
        pytest.skip("dcm2niix not installed")
    return found


def dcm2niix_canonical(indir: Path, outdir: Path) -> nib.Nifti1Image:
    """dcm2niix's conversion of the slices in ``indir``, in closest-canonical orientation."""
    run = subprocess.run(
        [dcm2niix(), "-z", "n", "-o", str(outdir), str(indir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    (nii,) = outdir.glob("*.nii")
    return nib.as_closest_canonical(nib.load(nii))
