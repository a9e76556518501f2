"""ageatlas.ingest.reader: field-20201 zip -> station volumes, end to end.

First on the tiny zips of zip_helpers, then over synth zips with each of
their defects.
"""

from __future__ import annotations

import io
import zipfile

import nibabel as nib
import numpy as np
import pydicom
import pytest
from zip_helpers import (
    COL_MM,
    COLUMNS,
    ROW_MM,
    SMALL,
    dcm2niix_canonical,
    excluded,
    expected_image,
    read,
    scan_series,
    write_zip,
)

from ageatlas.core.field20201 import CONTRASTS
from ageatlas.ingest.reader import read_participant


def test_reads_stations_head_to_foot_with_exact_voxels(good_zip, scan):
    stations, warnings = read(good_zip)
    assert warnings == []
    assert [v.index for v in stations] == [1, 2, 3, 4, 5, 6]
    for vol, (rows, n, spacing) in zip(stations, SMALL):
        assert set(vol.images) == {"W", "F"}
        assert vol.shape == (COLUMNS, rows, n)
        for contrast in ("W", "F"):
            image = vol.images[contrast]
            assert image.dtype == np.float32
            np.testing.assert_array_equal(image, expected_image(scan, vol.index, contrast))
        np.testing.assert_allclose(vol.spacing, [COL_MM, ROW_MM, spacing])
    centres = [(v.affine @ [0, 0, v.shape[2] / 2, 1])[2] for v in stations]
    assert centres == sorted(centres, reverse=True)  # superior (RAS +z) first


def test_all_contrasts_and_order_independence(tmp_path, scan):
    a = write_zip(tmp_path / "a.zip", scan.datasets, seed=1)
    b = write_zip(tmp_path / "b.zip", scan.datasets, seed=2, manifest=False)
    va, _ = read(a, contrasts=CONTRASTS)
    vb, _ = read(b, contrasts=("opp", "W"))
    assert set(va[0].images) == set(CONTRASTS) and set(vb[0].images) == {"opp", "W"}
    for x, y in zip(va, vb):
        np.testing.assert_array_equal(x.images["opp"], y.images["opp"])
        np.testing.assert_array_equal(x.affine, y.affine)
        np.testing.assert_array_equal(x.images["in"], expected_image(scan, x.index, "in"))


def test_missing_station_or_water_is_excluded(tmp_path, scan):
    no_station = [
        ds
        for ds in scan.datasets
        if ds not in sum((scan_series(scan, 4, c) for c in CONTRASTS), [])
    ]
    message = excluded(write_zip(tmp_path / "a.zip", no_station))
    assert "5 stations found, expected 6" in message
    no_water = [ds for ds in scan.datasets if ds not in scan_series(scan, 5, "W")]
    message = excluded(write_zip(tmp_path / "b.zip", no_water))
    assert "station 5" in message and "no W (water)" in message
    assert len(read(tmp_path / "b.zip", contrasts=("F",))[0]) == 6
    assert "6 stations found, expected 7" in excluded(tmp_path / "b.zip", expected_stations=7)


# --------------------------------------------------------------------------- synth zips

SYNTH_SCALE = 0.2
SYNTH_EXCLUDED = {
    "missing_station": "5 stations found, expected 6",
    "missing_water": "no W (water) series",
    "bad_orientation": "inconsistent ImageOrientationPatient",
    "truncated_zip": "truncated",
    "empty_zip": "empty zip",
    "zero_bytes": "0-byte file",
}
SYNTH_WARNED = {
    "non_dicom_member": "non-DICOM member",
    "path_traversal_member": "'../evil.dcm'",
}
SYNTH_SILENT = ("no_manifest", "garbled_manifest", "manifest_cvs")


@pytest.fixture(scope="module")
def synth_zips(tmp_path_factory):
    """make(*defects) -> path of a small synth zip; .clean is the defect-free read."""
    dicom = pytest.importorskip("ageatlas.synthetic.dicom")  # imports the other two
    from ageatlas.synthetic.defects import defect_station
    from ageatlas.synthetic.participants import make_cohort

    person = make_cohort(1, seed=0)[0]
    folder = tmp_path_factory.mktemp("synth")

    def make(*defects):
        path = folder / f"{'+'.join(defects) or 'clean'}_{person.eid}_20201_2_0.zip"
        if not path.exists():
            dicom.write_participant_zip(path, person, scale=SYNTH_SCALE, defects=defects, seed=0)
        return path

    make.defect_station, make.person = defect_station, person
    make.clean, warnings = read_participant(make())
    assert warnings == []
    return make


def _same_images(a, b):
    assert [v.shape for v in a] == [v.shape for v in b]
    for x, y in zip(a, b):
        for contrast in x.images:
            np.testing.assert_array_equal(x.images[contrast], y.images[contrast])
        np.testing.assert_allclose(x.affine, y.affine, atol=1e-6)


def test_synth_clean_geometry(synth_zips):
    stations = synth_zips.clean
    assert len(stations) == 6
    tops = [(v.affine @ [0, 0, v.shape[2] - 1, 1])[2] for v in stations]
    bottoms = [v.affine[2, 3] for v in stations]
    assert tops == sorted(tops, reverse=True)
    assert all(b1 < t2 for b1, t2 in zip(bottoms, tops[1:]))  # neighbours overlap in z


@pytest.mark.parametrize("defect", sorted(SYNTH_EXCLUDED))
def test_synth_fatal_defects(synth_zips, defect):
    message = excluded(synth_zips(defect))
    assert SYNTH_EXCLUDED[defect] in message
    station = synth_zips.defect_station(synth_zips.person, defect, 0)
    if defect == "missing_water":
        assert f"station {station} " in message


@pytest.mark.parametrize("defect", sorted(SYNTH_WARNED) + list(SYNTH_SILENT))
def test_synth_tolerated_member_defects(synth_zips, defect):
    stations, warnings = read_participant(synth_zips(defect))
    _same_images(stations, synth_zips.clean)
    if defect in SYNTH_WARNED:
        assert len(warnings) == 1 and SYNTH_WARNED[defect] in warnings[0]
    else:
        assert warnings == []


def test_synth_repeat_station_keeps_the_clean_repeat(synth_zips):
    stations, warnings = read_participant(synth_zips("repeat_station"))
    _same_images(stations, synth_zips.clean)  # the repeat is the clean acquisition
    station = synth_zips.defect_station(synth_zips.person, "repeat_station", 0)
    assert len(warnings) == 1 and f"station {station}: acquired more than once" in warnings[0]
    assert stations[station - 1].series_time > max(v.series_time for v in synth_zips.clean)


def test_synth_short_series(synth_zips):
    stations, warnings = read_participant(synth_zips("short_series"))
    station = synth_zips.defect_station(synth_zips.person, "short_series", 0)
    assert warnings and all(f"station {station}: " in w for w in warnings)
    for vol, clean in zip(stations, synth_zips.clean):
        n = vol.shape[2]
        cropped = vol.index == station and any("cropped" in w for w in warnings)
        assert n == clean.shape[2] - cropped
        for contrast in vol.images:  # the missing slice is the most inferior one: k = 0
            np.testing.assert_array_equal(
                vol.images[contrast], clean.images[contrast][:, :, clean.shape[2] - n :]
            )


def test_synth_fat_water_swap_is_read_as_labelled(synth_zips):
    """Swaps are visible in the pixels only; detecting them is the stitcher's job."""
    stations, warnings = read_participant(synth_zips("fat_water_swap"))
    station = synth_zips.defect_station(synth_zips.person, "fat_water_swap", 0)
    assert warnings == []
    swapped = stations[station - 1].images
    np.testing.assert_array_equal(swapped["W"], synth_zips.clean[station - 1].images["F"])


def test_synth_station_agrees_with_dcm2niix(synth_zips, tmp_path):
    """An independent generator and an independent converter: same voxels, same place."""
    indir, outdir = tmp_path / "in", tmp_path / "out"
    indir.mkdir(), outdir.mkdir()
    with zipfile.ZipFile(synth_zips()) as zf:
        for n, info in enumerate(zf.infolist()):
            if not info.filename.endswith(".dcm"):
                continue
            data = zf.read(info)
            if pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SeriesNumber == 8:
                (indir / f"{n}.dcm").write_bytes(data)  # station 2, water
    theirs = dcm2niix_canonical(indir, outdir)
    vol = synth_zips.clean[1]
    ours = nib.as_closest_canonical(nib.Nifti1Image(vol.images["W"], vol.affine))
    np.testing.assert_allclose(ours.affine, theirs.affine, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(theirs.dataobj))
