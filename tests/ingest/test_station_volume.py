"""ageatlas.ingest.station_volume: voxels, affine, rescaling and cropping of a station."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from zip_helpers import (
    AXIAL,
    COL_MM,
    OBLIQUE,
    ROW_MM,
    SMALL,
    build_scan,
    dcm2niix_canonical,
    dicom_bytes,
    excluded,
    expected_image,
    read,
    scan_series,
    write_zip,
)


@pytest.mark.parametrize("orientation", [AXIAL, OBLIQUE], ids=["axial", "oblique"])
def test_affine_maps_voxels_to_dicom_positions(tmp_path, orientation):
    scan = build_scan(orientation=orientation)
    stations, _ = read(write_zip(tmp_path / "p.zip", scan.datasets))
    x_dir, y_dir = np.array(orientation[:3]), np.array(orientation[3:])
    for vol in stations:
        by_position = {
            tuple(ds.ImagePositionPatient): ds for ds in scan_series(scan, vol.index, "W")
        }
        for k in (0, vol.shape[2] - 1):
            i, j = 3, 5
            ras = vol.affine @ [i, j, k, 1]
            lps = ras[:3] * [-1, -1, 1]
            corner = lps - i * x_dir * COL_MM - j * y_dir * ROW_MM
            key = min(by_position, key=lambda p: np.linalg.norm(np.subtract(p, corner)))
            assert np.linalg.norm(np.subtract(key, corner)) < 1e-4
            ds = by_position[key]
            assert vol.images["W"][i, j, k] == ds.pixel_array[j, i]


def test_rescale_slope_and_intercept(tmp_path, scan):
    for ds in scan.datasets:
        ds.RescaleSlope, ds.RescaleIntercept = 0.5, -10
    stations, _ = read(write_zip(tmp_path / "p.zip", scan.datasets))
    np.testing.assert_allclose(stations[2].images["F"], expected_image(scan, 3, "F") * 0.5 - 10)


def test_series_one_slice_short_is_cropped_with_a_warning(tmp_path, scan):
    last = max(scan_series(scan, 2, "F"), key=lambda ds: ds.InstanceNumber)  # most inferior
    scan.datasets.remove(last)
    stations, warnings = read(write_zip(tmp_path / "p.zip", scan.datasets))
    vol = stations[1]
    assert vol.shape[2] == SMALL[1][1] - 1
    np.testing.assert_array_equal(vol.images["W"], expected_image(scan, 2, "W")[:, :, 1:])
    np.testing.assert_array_equal(vol.images["F"], expected_image(scan, 2, "F")[:, :, 1:])
    assert any("station 2" in w and "cropped" in w for w in warnings)
    assert any("4 slices" in w for w in vol.notes)
    for ds in sorted(scan_series(scan, 5, "F"), key=lambda ds: ds.InstanceNumber)[-3:]:
        scan.datasets.remove(ds)  # 3 short: too many to crop
    message = excluded(write_zip(tmp_path / "q.zip", scan.datasets))
    assert "station 5" in message and "share only 5 of 8 slices" in message


def test_slice_missing_inside_a_series_is_excluded(tmp_path, scan):
    middle = next(ds for ds in scan_series(scan, 3, "W") if ds.InstanceNumber == 3)
    scan.datasets.remove(middle)
    assert "spacing not uniform" in excluded(write_zip(tmp_path / "p.zip", scan.datasets))


# --------------------------------------------------------------------------- dcm2niix


@pytest.mark.parametrize("orientation", [AXIAL, OBLIQUE], ids=["axial", "oblique"])
def test_station_agrees_with_dcm2niix(tmp_path, orientation):
    scan = build_scan(orientation=orientation)
    path = write_zip(tmp_path / "p.zip", scan.datasets)
    stations, _ = read(path)
    indir, outdir = tmp_path / "in", tmp_path / "out"
    indir.mkdir(), outdir.mkdir()
    for n, ds in enumerate(scan_series(scan, 2, "W")):
        (indir / f"{n}.dcm").write_bytes(dicom_bytes(ds))
    theirs = dcm2niix_canonical(indir, outdir)
    ours = nib.as_closest_canonical(nib.Nifti1Image(stations[1].images["W"], stations[1].affine))
    np.testing.assert_allclose(ours.affine, theirs.affine, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(theirs.dataobj))
