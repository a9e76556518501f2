"""The participant zip has the real field-20201 layout: members, series, tags, manifest."""

from __future__ import annotations

import csv
import io
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage
from synthetic_helpers import SCALE, station_series, write

from ageatlas.core import field20201 as layout
from ageatlas.synthetic.participants import make_cohort


def test_members_are_flat_uid_named_and_unordered(clean_zip, clean):
    with zipfile.ZipFile(clean_zip) as zf:
        names = zf.namelist()
    manifests = [n for n in names if n in ("manifest.csv", "manifest.cvs")]
    assert len(manifests) == 1
    dicoms = [n for n in names if n not in manifests]
    assert len(dicoms) == len(set(dicoms)) == sum(len(s) for s in clean.values())
    assert all(re.fullmatch(r"[0-9]+(\.[0-9]+)+\.dcm", n) for n in dicoms)
    # Neither member order nor name order follows the series order.
    by_name = {d.SOPInstanceUID + ".dcm": int(d.SeriesNumber) for s in clean.values() for d in s}
    in_zip_order = [by_name[n] for n in dicoms]
    in_name_order = [by_name[n] for n in sorted(dicoms)]
    for order in (in_zip_order, in_name_order):
        assert abs(np.corrcoef(order, np.arange(len(order)))[0, 1]) < 0.3


def test_24_series_in_real_order_and_descriptions(clean):
    assert sorted(clean) == list(range(1, 25))
    for spec in layout.STATIONS:
        for contrast, slices in station_series(clean, spec.index).items():
            expected = ("Dixon_BH_17s_" if spec.index in (2, 3, 4) else "Dixon_noBH_") + contrast
            assert {d.SeriesDescription for d in slices} == {expected}
            assert expected == layout.series_description(spec, contrast)
    uids = [s[0].SeriesInstanceUID for s in clean.values()]
    assert len(set(uids)) == 24


def test_dicom_tags_are_the_real_ones(clean, participant):
    all_slices = [d for s in clean.values() for d in s]
    assert len({d.SOPInstanceUID for d in all_slices}) == len(all_slices)
    assert len({d.StudyInstanceUID for d in all_slices}) == 1
    assert len({d.FrameOfReferenceUID for d in all_slices}) == 1
    for d in all_slices:
        assert d.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert d.SOPClassUID == MRImageStorage and d.Modality == "MR"
        assert list(d.ImageType) == ["ORIGINAL", "PRIMARY", "M", "DIS2D"]
        assert d.PatientID == str(participant.eid) and d.PatientPosition == "HFS"
        assert "synthetic" in d.InstitutionName
        assert (d.BitsAllocated, d.BitsStored, d.HighBit, d.PixelRepresentation) == (16, 12, 11, 0)
        assert d.PhotometricInterpretation == "MONOCHROME2"
        assert [float(v) for v in d.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        pixels = d.pixel_array
        assert pixels.dtype == np.uint16 and pixels.max() <= 4095
    assert max(int(d.pixel_array.max()) for d in all_slices) > 1500  # not blank


def test_manifest_has_the_unquoted_date_and_lists_every_slice(clean_zip, clean, participant):
    with zipfile.ZipFile(clean_zip) as zf:
        name = next(n for n in zf.namelist() if n.startswith("manifest"))
        text = zf.read(name).decode()
        dicoms = {n for n in zf.namelist() if n != name}
    rows = list(csv.reader(io.StringIO(text)))
    header = rows[0]
    assert {"filename", "patientid", "series discription"} <= set(header)
    assert all(
        len(r) == len(header) + 1 for r in rows[1:]
    )  # naive parsing breaks, as in real files
    study_date = clean[1][0].StudyDate
    expected = pd.Timestamp(study_date).strftime("%b %-d, %Y")
    i_date = header.index("date")
    assert {f"{r[i_date]},{r[i_date + 1]}" for r in rows[1:]} == {expected}
    assert re.search(r",[A-Z][a-z]{2} \d{1,2}, \d{4},", text)
    assert {r[0] for r in rows[1:]} == dicoms
    assert {r[header.index("patientid") + 1] for r in rows[1:]} == {str(participant.eid)}
    described = {r[0]: r[-1] for r in rows[1:]}
    for slices in clean.values():
        assert described[slices[0].SOPInstanceUID + ".dcm"] == slices[0].SeriesDescription


def test_manifest_spelling_varies_between_participants(tmp_path):
    names = set()
    for p in make_cohort(8, seed=0):
        path = write(tmp_path, p, scale=0.03)
        with zipfile.ZipFile(path) as zf:
            names |= {n for n in zf.namelist() if n.startswith("manifest")}
    assert names == {"manifest.csv", "manifest.cvs"}


DCM2NIIX = shutil.which("dcm2niix") or shutil.which(
    "dcm2niix", path=str(Path(sys.executable).parent)
)


@pytest.mark.skipif(DCM2NIIX is None, reason="dcm2niix not installed")
def test_dcm2niix_reads_a_station(clean_zip, tmp_path):
    with zipfile.ZipFile(clean_zip) as zf:
        zf.extractall(tmp_path / "dicom")
    out = tmp_path / "nifti"
    out.mkdir()
    subprocess.run([DCM2NIIX, "-f", "%s", "-z", "n", "-o", str(out), str(tmp_path / "dicom")],
                   check=True, capture_output=True)  # fmt: skip
    image = nib.load(out / "12.nii")  # station 3 water
    spec = layout.STATIONS[2]
    expected = tuple(max(1, round(n * SCALE)) for n in (spec.columns, spec.rows, spec.slices))
    assert image.shape == expected
    assert nib.aff2axcodes(image.affine)[2] == "S"
