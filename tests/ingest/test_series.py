"""ageatlas.ingest.series: repeats, orientation, duplicates and non-Dixon series."""

from __future__ import annotations

import numpy as np
from zip_helpers import (
    OBLIQUE,
    build_scan,
    dicom_bytes,
    excluded,
    expected_image,
    read,
    scan_series,
    write_zip,
)


def test_repeated_station_keeps_the_later_acquisition(tmp_path, scan):
    again = build_scan(seed=9, series_time="1300{:02d}.000000", first_series=25)
    repeat = [ds for ds in again.datasets if 33 <= ds.SeriesNumber <= 36]  # station 3 again
    for ds in repeat:
        ds.StudyInstanceUID = scan.datasets[0].StudyInstanceUID
    path = write_zip(tmp_path / "p.zip", scan.datasets + repeat)
    stations, warnings = read(path)
    assert len(stations) == 6
    np.testing.assert_array_equal(stations[2].images["W"], expected_image(again, 3, "W"))
    np.testing.assert_array_equal(stations[1].images["W"], expected_image(scan, 2, "W"))
    assert stations[2].series_time == "130036.000000"
    assert any("station 3" in w and "acquired more than once" in w for w in warnings)


def test_inconsistent_orientation_is_excluded(tmp_path, scan):
    for ds in scan_series(scan, 6, "F"):
        ds.ImageOrientationPatient = list(OBLIQUE)
    assert "ImageOrientationPatient" in excluded(write_zip(tmp_path / "a.zip", scan.datasets))
    scan = build_scan()
    scan_series(scan, 2, "in")[1].ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    message = excluded(write_zip(tmp_path / "b.zip", scan.datasets))
    assert "differs between slices" in message and "'Dixon_BH_17s_in'" in message


def test_duplicate_positions(tmp_path, scan):
    series = scan_series(scan, 1, "W")
    copy = dicom_bytes(series[2])
    stations, warnings = read(
        write_zip(tmp_path / "a.zip", scan.datasets, extra=[("copy-of-a-slice", copy)])
    )
    assert any("duplicate slice" in w and "same SOPInstanceUID" in w for w in warnings)
    np.testing.assert_array_equal(stations[0].images["W"], expected_image(scan, 1, "W"))
    series[3].ImagePositionPatient = series[2].ImagePositionPatient
    assert "same position" in excluded(write_zip(tmp_path / "b.zip", scan.datasets))


def test_non_dixon_series_is_ignored_with_a_warning(tmp_path, scan):
    localizer = build_scan(seed=3).datasets[:3]
    for ds in localizer:
        ds.SeriesDescription, ds.SeriesNumber = "localizer", 99
        ds.SeriesInstanceUID = localizer[0].SeriesInstanceUID
    stations, warnings = read(write_zip(tmp_path / "p.zip", scan.datasets + localizer))
    assert len(stations) == 6 and len(warnings) == 1 and "'localizer' (3 slices)" in warnings[0]


def test_orientation_that_contradicts_positions_is_excluded(tmp_path, scan):
    for ds in scan.datasets:  # consistent, but coronal while the slices step along z
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    assert "orientation and positions disagree" in excluded(
        write_zip(tmp_path / "a.zip", scan.datasets)
    )
    scan = build_scan()
    for ds in scan_series(scan, 3, "F"):
        x, y, z = ds.ImagePositionPatient
        ds.ImagePositionPatient = [x + ds.InstanceNumber, y, z]  # a sheared stack
    assert "sheared" in excluded(write_zip(tmp_path / "b.zip", scan.datasets))
