"""ageatlas.ingest.dicom_headers: encodings, contrasts and broken headers."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from zip_helpers import dicom_bytes, excluded, read, write_zip

from ageatlas.ingest.dicom_headers import contrast_of


def test_other_encodings_read_the_same(tmp_path, scan):
    """Implicit VR, no preamble/file meta, stored (not deflated) members."""
    reference, _ = read(write_zip(tmp_path / "ref.zip", scan.datasets))
    odd = [(i % 3 == 0, i % 2 == 0) for i in range(len(scan.datasets))]
    encodings = iter(odd)

    def encode(ds):
        implicit, preamble = next(encodings)
        return dicom_bytes(ds, implicit=implicit, preamble=preamble)

    path = write_zip(
        tmp_path / "odd.zip", scan.datasets, encode=encode, compression=zipfile.ZIP_STORED
    )
    stations, warnings = read(path)
    assert warnings == []
    for x, y in zip(reference, stations):
        np.testing.assert_array_equal(x.images["W"], y.images["W"])
        np.testing.assert_allclose(x.affine, y.affine)


@pytest.mark.parametrize(
    "description, image_type, contrast",
    [
        ("Dixon_noBH_W", "", "W"),
        ("Dixon_BH_17s_opp", "", "opp"),
        ("DIXON_NOBH_IN", "", "in"),
        ("Dixon_noBH_F", "", "F"),
        ("dixon water", "", "W"),
        ("Dixon_in_phase", "", "in"),
        ("Dixon_out_phase", "", "opp"),
        ("Dixon_noBH", r"DERIVED\PRIMARY\DIXON\WATER", "W"),
        ("Dixon_noBH", r"DERIVED\PRIMARY\DIXON\OPP_PHASE", "opp"),
        ("localizer", "", None),
        ("", r"ORIGINAL\PRIMARY\M\DIS2D", None),
    ],
)
def test_contrast_of(description, image_type, contrast):
    assert contrast_of(description, image_type) == contrast


def test_unparsable_dicom_and_wrong_pixel_size(tmp_path, scan):
    garbage = b"\0" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00" + bytes(range(256)) * 4
    bad = write_zip(tmp_path / "bad.zip", scan.datasets, extra=[("garbage.dcm", garbage)])
    message = excluded(bad)
    assert "'garbage.dcm'" in message and "cannot be parsed" in message

    w = next(ds for ds in scan.datasets if ds.SeriesDescription.endswith("_W"))
    w.PixelData = w.PixelData[:-20]
    message = excluded(write_zip(tmp_path / "short.zip", scan.datasets))
    assert f"{w.SOPInstanceUID}.dcm" in message and "pixel data has" in message
    # the same defect in a contrast that was not asked for is never decoded
    assert len(read(tmp_path / "short.zip", contrasts=("F",))[0]) == 6


def test_bad_header_value_is_excluded(tmp_path, scan):
    scan.datasets[5].ImagePositionPatient = ["1", "2"]
    message = excluded(write_zip(tmp_path / "p.zip", scan.datasets))
    assert "ImagePositionPatient" in message and scan.datasets[5].SOPInstanceUID in message
