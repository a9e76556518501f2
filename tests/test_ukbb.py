"""ageatlas.ukbb: field-20201 zip -> station volumes.

Most tests use a tiny zip written here with pydicom, independently of
ageatlas.synth (a second generator checks the reader against the format,
not against one writer's habits); the last ones run the reader over synth
zips with each of its defects. Geometry is checked against DICOM's own
definition and against dcm2niix.
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

from ageatlas import ukbb
from ageatlas.layout import CONTRASTS, PIXEL_SPACING_MM
from ageatlas.qc import ParticipantExcluded

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
# ~10 degrees about the left-right axis: still one orientation for all stations
OBLIQUE = (1.0, 0.0, 0.0, 0.0, float(np.cos(0.17)), float(-np.sin(0.17)))
# (rows, slices, slice spacing): the six stations, shrunk; columns are 12 everywhere
SMALL = ((9, 7, 3.0), (10, 5, 4.5), (10, 5, 4.5), (10, 5, 4.5), (8, 8, 3.5), (7, 7, 4.0))
COLUMNS = 12
# Real data are isotropic in plane (layout.PIXEL_SPACING_MM); distinct values catch a swap.
ROW_MM, COL_MM = PIXEL_SPACING_MM, 2.0  # PixelSpacing = (between rows, between columns)
OVERLAP = 2  # slices shared by neighbouring stations


# --------------------------------------------------------------------------- fixture


@dataclass
class Scan:
    """Slices of a small participant and the pixels each station/contrast must give."""

    datasets: list[Dataset]
    truth: dict[tuple[int, str], np.ndarray]  # (station, contrast) -> (slice, row, col), head first


def _slice(contrast, k, pixels, *, z, orientation, spacing, series_uid, series_number,
           series_time, study_uid, frame_uid):
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


def build_scan(seed=0, *, orientation=AXIAL, stations=SMALL, series_time="1200{:02d}.000000",
               first_series=1) -> Scan:
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
            datasets += [_slice(contrast, k, pixels[k], z=z, orientation=orientation,
                                spacing=spacing, series_uid=uid, series_number=number,
                                series_time=series_time.format(number), study_uid=study,
                                frame_uid=frame) for k in range(n)]
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


def write_zip(path: Path, datasets, *, extra=(), manifest=True, seed=0,
              compression=zipfile.ZIP_DEFLATED, encode=dicom_bytes) -> Path:
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
    return ukbb.read_participant(path, **kwargs)


def excluded(path, **kwargs) -> str:
    with pytest.raises(ParticipantExcluded) as info:
        ukbb.read_participant(path, **kwargs)
    message = str(info.value)
    assert message.startswith(Path(path).name + ": "), message
    return message


@pytest.fixture
def scan():
    return build_scan()


@pytest.fixture
def good_zip(tmp_path, scan):
    return write_zip(tmp_path / "1000001_20201_2_0.zip", scan.datasets)


# --------------------------------------------------------------------------- reading


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


@pytest.mark.parametrize("orientation", [AXIAL, OBLIQUE], ids=["axial", "oblique"])
def test_affine_maps_voxels_to_dicom_positions(tmp_path, orientation):
    scan = build_scan(orientation=orientation)
    stations, _ = read(write_zip(tmp_path / "p.zip", scan.datasets))
    x_dir, y_dir = np.array(orientation[:3]), np.array(orientation[3:])
    for vol in stations:
        by_position = {tuple(ds.ImagePositionPatient): ds for ds in _series(scan, vol.index, "W")}
        for k in (0, vol.shape[2] - 1):
            i, j = 3, 5
            ras = vol.affine @ [i, j, k, 1]
            lps = ras[:3] * [-1, -1, 1]
            corner = lps - i * x_dir * COL_MM - j * y_dir * ROW_MM
            key = min(by_position, key=lambda p: np.linalg.norm(np.subtract(p, corner)))
            assert np.linalg.norm(np.subtract(key, corner)) < 1e-4
            ds = by_position[key]
            assert vol.images["W"][i, j, k] == ds.pixel_array[j, i]


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


def test_other_encodings_read_the_same(tmp_path, scan):
    """Implicit VR, no preamble/file meta, stored (not deflated) members."""
    reference, _ = read(write_zip(tmp_path / "ref.zip", scan.datasets))
    odd = [(i % 3 == 0, i % 2 == 0) for i in range(len(scan.datasets))]
    encodings = iter(odd)

    def encode(ds):
        implicit, preamble = next(encodings)
        return dicom_bytes(ds, implicit=implicit, preamble=preamble)

    path = write_zip(tmp_path / "odd.zip", scan.datasets, encode=encode,
                     compression=zipfile.ZIP_STORED)
    stations, warnings = read(path)
    assert warnings == []
    for x, y in zip(reference, stations):
        np.testing.assert_array_equal(x.images["W"], y.images["W"])
        np.testing.assert_allclose(x.affine, y.affine)


def test_rescale_slope_and_intercept(tmp_path, scan):
    for ds in scan.datasets:
        ds.RescaleSlope, ds.RescaleIntercept = 0.5, -10
    stations, _ = read(write_zip(tmp_path / "p.zip", scan.datasets))
    np.testing.assert_allclose(stations[2].images["F"], expected_image(scan, 3, "F") * 0.5 - 10)


@pytest.mark.parametrize("description, image_type, contrast", [
    ("Dixon_noBH_W", "", "W"), ("Dixon_BH_17s_opp", "", "opp"), ("DIXON_NOBH_IN", "", "in"),
    ("Dixon_noBH_F", "", "F"), ("dixon water", "", "W"), ("Dixon_in_phase", "", "in"),
    ("Dixon_out_phase", "", "opp"), ("Dixon_noBH", r"DERIVED\PRIMARY\DIXON\WATER", "W"),
    ("Dixon_noBH", r"DERIVED\PRIMARY\DIXON\OPP_PHASE", "opp"), ("localizer", "", None),
    ("", r"ORIGINAL\PRIMARY\M\DIS2D", None),
])
def test_contrast_of(description, image_type, contrast):
    assert ukbb.contrast_of(description, image_type) == contrast


# --------------------------------------------------------------------------- zip defects


def test_zip_level_defects(tmp_path, good_zip):
    zero = tmp_path / "zero.zip"
    zero.write_bytes(b"")
    assert "0-byte file" in excluded(zero)
    text = tmp_path / "text.zip"
    text.write_text("eid,age\n1,60\n")
    assert "not a zip" in excluded(text)
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(good_zip.read_bytes()[: good_zip.stat().st_size // 2])
    assert "truncated" in excluded(truncated)
    empty = tmp_path / "empty.zip"
    zipfile.ZipFile(empty, "w").close()
    assert "empty zip" in excluded(empty)
    assert "missing.zip" in excluded(tmp_path / "missing.zip")


def test_crc_error_in_a_needed_member(tmp_path, scan):
    path = write_zip(tmp_path / "crc.zip", scan.datasets, compression=zipfile.ZIP_STORED)
    with zipfile.ZipFile(path) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(".dcm")
                    and pydicom.dcmread(zf.open(i)).SeriesDescription.endswith("_W"))
    raw = bytearray(path.read_bytes())
    data_start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[data_start + info.file_size - 7] ^= 0xFF  # inside the pixel data
    path.write_bytes(bytes(raw))
    message = excluded(path)
    assert info.filename in message and "CRC" in message


def test_zip_bombs_refused_before_reading(tmp_path, scan, monkeypatch):
    big = write_zip(tmp_path / "big.zip", scan.datasets[:2],
                    extra=[("blob.dcm", bytes(17 << 20))])
    assert "zip bomb" in excluded(big) and "blob.dcm" in excluded(big)
    dense = write_zip(tmp_path / "dense.zip", scan.datasets[:2],
                      extra=[("dense.dcm", bytes(2 << 20))])
    assert "expands" in excluded(dense)

    def no_reading(*args, **kwargs):
        raise AssertionError("a member was opened")

    monkeypatch.setattr(zipfile.ZipFile, "open", no_reading)
    small = ukbb.ZipLimits(max_total_bytes=10_000)
    assert "zip bomb" in excluded(dense, limits=small)
    assert "members" in excluded(dense, limits=ukbb.ZipLimits(max_members=2))


def test_unsafe_and_foreign_members_are_ignored_with_a_warning(tmp_path, scan):
    extra = [("../../etc/evil.dcm", dicom_bytes(scan.datasets[0])),
             ("/abs/path.dcm", b"x"), ("notes.txt", b"hello, not DICOM"),
             ("sub/manifest.cvs", b"garbled,,\"\nAug 30, 2015")]
    stations, warnings = read(write_zip(tmp_path / "p.zip", scan.datasets, extra=extra))
    assert len(stations) == 6
    unsafe = next(w for w in warnings if "unsafe" in w)
    assert "'../../etc/evil.dcm'" in unsafe and "'/abs/path.dcm'" in unsafe
    assert any("non-DICOM" in w and "'notes.txt'" in w for w in warnings)
    assert len(warnings) == 2 and all(w.startswith("p.zip: ") for w in warnings)


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


# --------------------------------------------------------------------------- series/station defects


def _series(scan, station, contrast):
    desc = ("Dixon_BH_17s_" if SMALL[station - 1][2] == 4.5 else "Dixon_noBH_") + contrast
    first = 1 + 4 * (station - 1) + CONTRASTS.index(contrast)
    return [ds for ds in scan.datasets
            if ds.SeriesDescription == desc and ds.SeriesNumber == first]


def test_series_one_slice_short_is_cropped_with_a_warning(tmp_path, scan):
    last = max(_series(scan, 2, "F"), key=lambda ds: ds.InstanceNumber)  # most inferior
    scan.datasets.remove(last)
    stations, warnings = read(write_zip(tmp_path / "p.zip", scan.datasets))
    vol = stations[1]
    assert vol.shape[2] == SMALL[1][1] - 1
    np.testing.assert_array_equal(vol.images["W"], expected_image(scan, 2, "W")[:, :, 1:])
    np.testing.assert_array_equal(vol.images["F"], expected_image(scan, 2, "F")[:, :, 1:])
    assert any("station 2" in w and "cropped" in w for w in warnings)
    assert any("4 slices" in w for w in vol.notes)
    for ds in sorted(_series(scan, 5, "F"), key=lambda ds: ds.InstanceNumber)[-3:]:
        scan.datasets.remove(ds)  # 3 short: too many to crop
    message = excluded(write_zip(tmp_path / "q.zip", scan.datasets))
    assert "station 5" in message and "share only 5 of 8 slices" in message


def test_slice_missing_inside_a_series_is_excluded(tmp_path, scan):
    middle = next(ds for ds in _series(scan, 3, "W") if ds.InstanceNumber == 3)
    scan.datasets.remove(middle)
    assert "spacing not uniform" in excluded(write_zip(tmp_path / "p.zip", scan.datasets))


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


def test_missing_station_or_water_is_excluded(tmp_path, scan):
    no_station = [ds for ds in scan.datasets
                  if ds not in sum((_series(scan, 4, c) for c in CONTRASTS), [])]
    message = excluded(write_zip(tmp_path / "a.zip", no_station))
    assert "5 stations found, expected 6" in message
    no_water = [ds for ds in scan.datasets if ds not in _series(scan, 5, "W")]
    message = excluded(write_zip(tmp_path / "b.zip", no_water))
    assert "station 5" in message and "no W (water)" in message
    assert len(read(tmp_path / "b.zip", contrasts=("F",))[0]) == 6
    assert "6 stations found, expected 7" in excluded(tmp_path / "b.zip", expected_stations=7)


def test_inconsistent_orientation_is_excluded(tmp_path, scan):
    for ds in _series(scan, 6, "F"):
        ds.ImageOrientationPatient = list(OBLIQUE)
    assert "ImageOrientationPatient" in excluded(write_zip(tmp_path / "a.zip", scan.datasets))
    scan = build_scan()
    _series(scan, 2, "in")[1].ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    message = excluded(write_zip(tmp_path / "b.zip", scan.datasets))
    assert "differs between slices" in message and "'Dixon_BH_17s_in'" in message


def test_duplicate_positions(tmp_path, scan):
    series = _series(scan, 1, "W")
    copy = dicom_bytes(series[2])
    stations, warnings = read(write_zip(tmp_path / "a.zip", scan.datasets,
                                        extra=[("copy-of-a-slice", copy)]))
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


# --------------------------------------------------------------------------- dcm2niix


def _dcm2niix() -> str:
    found = shutil.which("dcm2niix") or str(Path(sys.executable).with_name("dcm2niix"))
    if not Path(found).exists():
        pytest.skip("dcm2niix not installed")
    return found


@pytest.mark.parametrize("orientation", [AXIAL, OBLIQUE], ids=["axial", "oblique"])
def test_station_agrees_with_dcm2niix(tmp_path, orientation):
    scan = build_scan(orientation=orientation)
    path = write_zip(tmp_path / "p.zip", scan.datasets)
    stations, _ = read(path)
    indir, outdir = tmp_path / "in", tmp_path / "out"
    indir.mkdir(), outdir.mkdir()
    for n, ds in enumerate(_series(scan, 2, "W")):
        (indir / f"{n}.dcm").write_bytes(dicom_bytes(ds))
    run = subprocess.run([_dcm2niix(), "-z", "n", "-o", str(outdir), str(indir)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    (nii,) = outdir.glob("*.nii")
    theirs = nib.as_closest_canonical(nib.load(nii))
    ours = nib.as_closest_canonical(nib.Nifti1Image(stations[1].images["W"], stations[1].affine))
    np.testing.assert_allclose(ours.affine, theirs.affine, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(theirs.dataobj))


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
    synth = pytest.importorskip("ageatlas.synth")
    person = synth.make_cohort(1, seed=0)[0]
    folder = tmp_path_factory.mktemp("synth")

    def make(*defects):
        path = folder / f"{'+'.join(defects) or 'clean'}_{person.eid}_20201_2_0.zip"
        if not path.exists():
            synth.write_participant_zip(path, person, scale=SYNTH_SCALE, defects=defects, seed=0)
        return path

    make.synth, make.person = synth, person
    make.clean, warnings = ukbb.read_participant(make())
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
    station = synth_zips.synth.defect_station(synth_zips.person, defect, 0)
    if defect == "missing_water":
        assert f"station {station} " in message


@pytest.mark.parametrize("defect", sorted(SYNTH_WARNED) + list(SYNTH_SILENT))
def test_synth_tolerated_member_defects(synth_zips, defect):
    stations, warnings = ukbb.read_participant(synth_zips(defect))
    _same_images(stations, synth_zips.clean)
    if defect in SYNTH_WARNED:
        assert len(warnings) == 1 and SYNTH_WARNED[defect] in warnings[0]
    else:
        assert warnings == []


def test_synth_repeat_station_keeps_the_clean_repeat(synth_zips):
    stations, warnings = ukbb.read_participant(synth_zips("repeat_station"))
    _same_images(stations, synth_zips.clean)  # the repeat is the clean acquisition
    station = synth_zips.synth.defect_station(synth_zips.person, "repeat_station", 0)
    assert len(warnings) == 1 and f"station {station}: acquired more than once" in warnings[0]
    assert stations[station - 1].series_time > max(v.series_time for v in synth_zips.clean)


def test_synth_short_series(synth_zips):
    stations, warnings = ukbb.read_participant(synth_zips("short_series"))
    station = synth_zips.synth.defect_station(synth_zips.person, "short_series", 0)
    assert warnings and all(f"station {station}: " in w for w in warnings)
    for vol, clean in zip(stations, synth_zips.clean):
        n = vol.shape[2]
        cropped = vol.index == station and any("cropped" in w for w in warnings)
        assert n == clean.shape[2] - cropped
        for contrast in vol.images:  # the missing slice is the most inferior one: k = 0
            np.testing.assert_array_equal(vol.images[contrast],
                                          clean.images[contrast][:, :, clean.shape[2] - n:])


def test_synth_fat_water_swap_is_read_as_labelled(synth_zips):
    """Swaps are visible in the pixels only; detecting them is the stitcher's job."""
    stations, warnings = ukbb.read_participant(synth_zips("fat_water_swap"))
    station = synth_zips.synth.defect_station(synth_zips.person, "fat_water_swap", 0)
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
    run = subprocess.run([_dcm2niix(), "-z", "n", "-o", str(outdir), str(indir)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    (nii,) = outdir.glob("*.nii")
    theirs = nib.as_closest_canonical(nib.load(nii))
    vol = synth_zips.clean[1]
    ours = nib.as_closest_canonical(nib.Nifti1Image(vol.images["W"], vol.affine))
    np.testing.assert_allclose(ours.affine, theirs.affine, atol=1e-3)
    np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(theirs.dataobj))


def test_orientation_that_contradicts_positions_is_excluded(tmp_path, scan):
    for ds in scan.datasets:  # consistent, but coronal while the slices step along z
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    assert "orientation and positions disagree" in excluded(
        write_zip(tmp_path / "a.zip", scan.datasets))
    scan = build_scan()
    for ds in _series(scan, 3, "F"):
        x, y, z = ds.ImagePositionPatient
        ds.ImagePositionPatient = [x + ds.InstanceNumber, y, z]  # a sheared stack
    assert "sheared" in excluded(write_zip(tmp_path / "b.zip", scan.datasets))
