"""The synthetic cohort writes the real field-20201 format and plants age where it says."""

from __future__ import annotations

import csv
import hashlib
import io
import re
import shutil
import subprocess
import sys
import zipfile
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage
from scipy import ndimage

from ageatlas import layout, synth

SCALE = 0.2
SEED = 7
AGE_VALUES = [v for v, name in synth.REGION_LABELS.items() if name in synth.AGE_REGIONS]
LABEL = {name: v for v, name in synth.REGION_LABELS.items()}


# ----------------------------------------------------------------------------- helpers
def read_zip(path: Path) -> dict[int, list[pydicom.Dataset]]:
    """DICOM members by SeriesNumber, slices sorted head to foot; other members skipped."""
    series = defaultdict(list)
    with zipfile.ZipFile(path) as zf:
        for name in zf.namelist():
            try:
                ds = pydicom.dcmread(io.BytesIO(zf.read(name)))
            except InvalidDicomError:
                continue
            series[int(ds.SeriesNumber)].append(ds)
    for slices in series.values():
        slices.sort(key=lambda d: -float(d.ImagePositionPatient[2]))
    return dict(series)


def volume(slices) -> np.ndarray:
    """(columns, rows, slices) array, as in ageatlas.volume.StationVolume."""
    return np.stack([d.pixel_array.T for d in slices], axis=2).astype(np.float64)


def lps_axes(slices):
    """World LPS coordinates of the columns, rows and slices of an axial series, from its tags."""
    d = slices[0]
    x0, y0, _ = map(float, d.ImagePositionPatient)
    dy, dx = map(float, d.PixelSpacing)
    x = x0 + dx * np.arange(int(d.Columns))
    y = y0 + dy * np.arange(int(d.Rows))
    z = np.array([float(s.ImagePositionPatient[2]) for s in slices])
    return x, y, z


def station_series(series, station: int) -> dict[str, list]:
    first = 4 * (station - 1) + 1
    return {c: series[first + i] for i, c in enumerate(layout.CONTRASTS)}


def slab(slices) -> tuple[float, float]:
    """(bottom, top) slab edges along z."""
    z = [float(s.ImagePositionPatient[2]) for s in slices]
    dz = float(slices[0].SpacingBetweenSlices)
    return min(z) - dz / 2, max(z) + dz / 2


def write(tmp_path, participant, name="p.zip", **kwargs) -> Path:
    path = tmp_path / name
    kwargs.setdefault("scale", SCALE)
    kwargs.setdefault("seed", SEED)
    synth.write_participant_zip(path, participant, **kwargs)
    return path


@pytest.fixture(scope="module")
def participant():
    return synth.SyntheticParticipant(eid=1000123, sex=1, age=62.0, bmi=27.5, age_offset=1.5)


@pytest.fixture(scope="module")
def clean_zip(participant, tmp_path_factory) -> Path:
    return write(tmp_path_factory.mktemp("clean"), participant)


@pytest.fixture(scope="module")
def clean(clean_zip):
    return read_zip(clean_zip)


# ----------------------------------------------------------------------------- cohort
def test_make_cohort_is_balanced_spread_and_deterministic():
    cohort = synth.make_cohort(60, seed=3)
    assert cohort == synth.make_cohort(60, seed=3)
    assert cohort != synth.make_cohort(60, seed=4)
    assert [p.eid for p in cohort] == list(range(1000001, 1000061))
    sexes = np.array([p.sex for p in cohort])
    assert (sexes == 0).sum() == (sexes == 1).sum() == 30
    for sex in (0, 1):
        bmi = np.array([p.bmi for p in cohort if p.sex == sex])
        groups = np.bincount(np.digitize(bmi, [25.0, 30.0]), minlength=3)
        assert groups.tolist() == [10, 10, 10]
    ages = np.array([p.age for p in cohort])
    assert ages.min() >= 46 and ages.max() <= 81
    assert np.all(np.histogram(ages, bins=10, range=(46, 81))[0] >= 3)  # uniform spread
    offsets = np.array([p.age_offset for p in cohort])
    assert 2.0 < offsets.std() < 6.5
    assert all(p.biological_age == pytest.approx(p.age + p.age_offset) for p in cohort)


def test_make_cohort_rejects_non_ukbb_eids():
    with pytest.raises(ValueError):
        synth.make_cohort(10, seed=0, first_eid=9_999_995)


def test_phenotype_table_uses_ukbb_columns():
    cohort = synth.make_cohort(6, seed=1)
    table = synth.phenotype_table(cohort)
    assert list(table.columns) == ["eid", "31-0.0", "21003-2.0", "21001-2.0"]
    assert table["eid"].tolist() == [p.eid for p in cohort]
    assert table["31-0.0"].tolist() == [p.sex for p in cohort]
    assert table["21003-2.0"].dtype == float and table["21001-2.0"].dtype == float


# ----------------------------------------------------------------------------- zip layout
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


def test_station_geometry_and_scale_keep_the_field_of_view(clean):
    for spec in layout.STATIONS:
        group = station_series(clean, spec.index)
        w = group["W"]
        assert {len(s) for s in group.values()} == {max(1, round(spec.slices * SCALE))}
        assert all(
            [s_.ImagePositionPatient for s_ in s] == [d.ImagePositionPatient for d in w]
            for s in group.values()
        )
        d = w[0]
        assert (d.Columns, d.Rows) == (max(1, round(spec.columns * SCALE)), max(1, round(spec.rows * SCALE)))
        dy, dx = map(float, d.PixelSpacing)
        assert dx * d.Columns == pytest.approx(spec.columns * layout.PIXEL_SPACING_MM, abs=1e-3)
        assert dy * d.Rows == pytest.approx(spec.rows * layout.PIXEL_SPACING_MM, abs=1e-3)
        dz = float(d.SpacingBetweenSlices)
        assert float(d.SliceThickness) == dz
        assert dz * len(w) == pytest.approx(spec.slices * spec.slice_spacing_mm, abs=1e-3)
        x0, y0, _ = map(float, d.ImagePositionPatient)  # centred in-plane like the real data
        assert x0 == pytest.approx(-dx * d.Columns / 2, abs=1e-3)
        assert y0 == pytest.approx(-dy * d.Rows / 2, abs=1e-3)
        z = np.array([float(s.ImagePositionPatient[2]) for s in w])
        assert np.allclose(np.diff(z), -dz, atol=1e-3)
        assert [float(s.SliceLocation) for s in w] == pytest.approx(z.tolist())
        assert [int(s.InstanceNumber) for s in w] == list(range(1, len(w) + 1))
    # Slab edges do not depend on scale: they match the full-resolution grids.
    for grid in synth._station_grids(1.0):
        bottom, top = slab(station_series(clean, grid.spec.index)["W"])
        assert top == pytest.approx(grid.z_top + grid.dz / 2, abs=1e-3)
        assert bottom == pytest.approx(grid.z[-1] - grid.dz / 2, abs=1e-3)


def test_stations_run_head_to_foot_and_overlap(clean):
    slabs = [slab(station_series(clean, k)["W"]) for k in range(1, 7)]
    tops = [t for _, t in slabs]
    assert tops == sorted(tops, reverse=True)  # station 1 is the most superior
    for (bottom, _), (_, next_top) in zip(slabs[:-1], slabs[1:]):
        assert 30 <= next_top - bottom <= 45
    coverage = slabs[0][1] - slabs[-1][0]
    assert 1100 <= coverage <= 1150
    times = [min(float(d.SeriesTime) for d in station_series(clean, k)["in"]) for k in range(1, 7)]
    assert times == sorted(times) and len(set(times)) == 6


def test_full_resolution_grid_matches_the_real_example():
    grids = synth._station_grids(1.0)
    g1 = grids[0]
    assert (g1.columns, g1.rows, g1.slices) == (224, 168, 64)
    assert g1.x[0] == pytest.approx(-250.00000762939)
    assert g1.y[0] == pytest.approx(-187.50000572205)
    assert -79.5 in g1.z.tolist()
    centre_span = grids[0].z[0] - grids[-1].z[-1]
    assert centre_span <= 369 * 3.0  # a 370 x 3.0 mm grid spans all slice centres
    assert all(g.dz == g.spec.slice_spacing_mm for g in grids)


def test_manifest_has_the_unquoted_date_and_lists_every_slice(clean_zip, clean, participant):
    with zipfile.ZipFile(clean_zip) as zf:
        name = next(n for n in zf.namelist() if n.startswith("manifest"))
        text = zf.read(name).decode()
        dicoms = {n for n in zf.namelist() if n != name}
    rows = list(csv.reader(io.StringIO(text)))
    header = rows[0]
    assert {"filename", "patientid", "series discription"} <= set(header)
    assert all(len(r) == len(header) + 1 for r in rows[1:])  # naive parsing breaks, as in real files
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
    for p in synth.make_cohort(8, seed=0):
        path = write(tmp_path, p, scale=0.03)
        with zipfile.ZipFile(path) as zf:
            names |= {n for n in zf.namelist() if n.startswith("manifest")}
    assert names == {"manifest.csv", "manifest.cvs"}


DCM2NIIX = shutil.which("dcm2niix") or shutil.which("dcm2niix", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(DCM2NIIX is None, reason="dcm2niix not installed")
def test_dcm2niix_reads_a_station(clean_zip, tmp_path):
    with zipfile.ZipFile(clean_zip) as zf:
        zf.extractall(tmp_path / "dicom")
    out = tmp_path / "nifti"
    out.mkdir()
    subprocess.run([DCM2NIIX, "-f", "%s", "-z", "n", "-o", str(out), str(tmp_path / "dicom")], check=True,
                   capture_output=True)  # fmt: skip
    image = nib.load(out / "12.nii")  # station 3 water
    spec = layout.STATIONS[2]
    expected = tuple(max(1, round(n * SCALE)) for n in (spec.columns, spec.rows, spec.slices))
    assert image.shape == expected
    assert nib.aff2axcodes(image.affine)[2] == "S"


# ----------------------------------------------------------------------------- image content
def test_contrasts_are_consistent_dixon_images(clean):
    group = station_series(clean, 3)
    v = {c: volume(s) for c, s in group.items()}
    body = v["in"] > 400
    assert np.corrcoef(v["in"][body], (v["W"] + v["F"])[body])[0, 1] > 0.95
    assert np.corrcoef(v["opp"][body], np.abs(v["W"] - v["F"])[body])[0, 1] > 0.95


def test_end_slices_carry_a_folding_ghost(clean, participant):
    for station in range(1, 7):
        w = station_series(clean, station)["in"]
        image = volume(w)
        air = synth.region_labels(participant, *lps_axes(w)) == 0
        # Wrap-around along z: the body at one slab end shows in the air of the other end.
        ghost = np.concatenate([image[:, :, k][air[:, :, k] & ~air[:, :, -1 - k]] for k in (0, -1)])
        middle = image[:, :, 1:-1][air[:, :, 1:-1]].mean()
        assert ghost.size > 0 and ghost.mean() > 3 * middle


def test_same_seed_same_bytes_other_seed_other_noise(tmp_path, participant, clean_zip, clean):
    again = write(tmp_path, participant)
    assert hashlib.sha256(again.read_bytes()).digest() == hashlib.sha256(clean_zip.read_bytes()).digest()
    other = read_zip(write(tmp_path, participant, "other.zip", seed=SEED + 1))
    a, b = volume(clean[12]), volume(other[12])
    assert a.shape == b.shape and not np.array_equal(a, b)
    assert [d.ImagePositionPatient for d in clean[12]] == [d.ImagePositionPatient for d in other[12]]


def test_age_changes_only_the_age_regions(tmp_path, participant):
    young = replace(participant, age=50.0, age_offset=0.0)
    old = replace(participant, age=80.0, age_offset=0.0)
    a = read_zip(write(tmp_path, young, "young.zip"))
    b = read_zip(write(tmp_path, old, "old.zip"))
    changed_in = defaultdict(int)
    for number in range(1, 25):
        diff = volume(b[number]) != volume(a[number])
        labels = synth.region_labels(young, *lps_axes(a[number]))
        assert np.array_equal(labels, synth.region_labels(old, *lps_axes(a[number])))
        assert np.isin(labels[diff], AGE_VALUES).all(), f"series {number} changed outside the age regions"
        for value in np.unique(labels[diff]):
            changed_in[synth.REGION_LABELS[value]] += int((labels[diff] == value).sum())
    assert changed_in["back_muscle"] > 100 and changed_in["heart"] > 20


def test_age_effects_point_the_planted_way(participant):
    x = np.arange(-248.0, 250.0, 3.0)
    y = np.arange(-192.0, 194.0, 3.0)
    z = np.arange(-600.0, 100.0, 2.0)  # fine along z so thin discs are sampled
    young = replace(participant, age=50.0, age_offset=0.0)
    old = replace(participant, age=60.0, age_offset=20.0)  # biological age is what counts
    labels = synth.region_labels(young, x, y, z)
    (w0, f0), (w1, f1) = synth.tissue_signal(young, x, y, z), synth.tissue_signal(old, x, y, z)
    outside = ~np.isin(labels, AGE_VALUES)
    assert np.array_equal(w0[outside], w1[outside]) and np.array_equal(f0[outside], f1[outside])
    m = {name: labels == LABEL[name] for name in synth.AGE_REGIONS}
    assert all(mask.sum() > 50 for mask in m.values())
    assert w1[m["intervertebral_disc"]].mean() < w0[m["intervertebral_disc"]].mean() - 0.05  # thinner discs
    assert w1[m["intervertebral_disc"]].max() < w0[m["intervertebral_disc"]].max() - 0.1  # drier discs
    assert w1[m["back_muscle"]].mean() < w0[m["back_muscle"]].mean() - 0.05
    assert f1[m["back_muscle"]].mean() > f0[m["back_muscle"]].mean() + 0.05
    assert w1[m["heart"]].mean() > w0[m["heart"]].mean() + 0.02  # more myocardium, less blood
    assert w1[m["aorta"]].mean() > w0[m["aorta"]].mean() + 0.02  # more lumen, less periaortic fat


def test_age_effect_scale_multiplies_the_planted_change(participant):
    x, y, z = np.arange(-150.0, 150.0, 4.0), np.arange(-150.0, 150.0, 4.0), np.arange(-300.0, 0.0, 2.0)
    labels = synth.region_labels(participant, x, y, z)
    heart = labels == LABEL["heart"]

    def heart_water(age, scale):
        return synth.tissue_signal(replace(participant, age=age, age_offset=0.0, age_effect_scale=scale),
                                   x, y, z)[0][heart].mean()

    assert heart_water(50.0, 0.0) == heart_water(70.0, 0.0)  # scale 0: no planted ageing
    change = {scale: heart_water(64.0, scale) - heart_water(56.0, scale) for scale in (1.0, 3.0)}
    assert change[3.0] > 2.0 * change[1.0] > 0


def test_phantom_grids_may_run_either_way(participant):
    x, y, z = np.arange(-240.0, 240.0, 16.0), np.arange(-180.0, 180.0, 16.0), np.arange(-900.0, 100.0, 20.0)
    labels = synth.region_labels(participant, x, y, z)
    assert np.array_equal(
        synth.region_labels(participant, x[::-1], y[::-1], z[::-1]), labels[::-1, ::-1, ::-1]
    )
    with pytest.raises(ValueError):
        synth.region_labels(participant, np.r_[x, 0.0], y, z)


def test_anatomy_varies_with_sex_and_bmi():
    x, y, z = np.arange(-248.0, 250.0, 4.0), np.arange(-192.0, 194.0, 4.0), np.arange(-990.0, 110.0, 8.0)

    def share(p, name):  # of the body volume
        labels = synth.region_labels(p, x, y, z)
        return (labels == LABEL[name]).sum() / (labels != 0).sum()

    lean_m = synth.SyntheticParticipant(1000001, 1, 60.0, 21.0)
    obese_m = replace(lean_m, bmi=36.0)
    obese_f = replace(obese_m, sex=0)
    assert share(obese_m, "subcutaneous_fat") > 1.5 * share(lean_m, "subcutaneous_fat")
    assert share(obese_m, "visceral_fat") > 1.3 * share(lean_m, "visceral_fat")
    assert share(obese_f, "subcutaneous_fat") > 1.5 * share(
        obese_m, "subcutaneous_fat"
    )  # women: more subcutaneous
    assert share(obese_m, "visceral_fat") > 1.8 * share(obese_f, "visceral_fat")  # men: more visceral
    assert share(obese_f, "heart") < share(obese_m, "heart")


# ----------------------------------------------------------------------------- truth
def test_truth_label_map_matches_the_phantom_and_the_dicom_frame(tmp_path, participant, clean):
    paths = synth.write_truth(tmp_path, participant)
    image = nib.load(paths["label_map"])
    labels = np.asarray(image.dataobj)
    assert labels.dtype == np.uint8 and image.header.get_xyzt_units()[0] == "mm"
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
    assert np.allclose(np.abs(np.diag(image.affine)[:3]), 4.0)
    # The map is region_labels sampled at the LPS positions its affine gives.
    ijk = np.stack(np.meshgrid(*map(np.arange, labels.shape), indexing="ij"), -1)[::7, ::7, ::7]
    ras = nib.affines.apply_affine(image.affine, ijk)
    x, y, z = -ras[:, 0, 0, 0], -ras[0, :, 0, 1], ras[0, 0, :, 2]
    assert np.array_equal(synth.region_labels(participant, x, y, z), labels[::7, ::7, ::7])
    # It covers every station.
    corners = nib.affines.apply_affine(image.affine, np.array([[0, 0, 0], np.array(labels.shape) - 1]))
    z_lo, z_hi = sorted(corners[:, 2])
    assert (
        z_lo <= min(slab(s)[0] for s in clean.values()) + 4
        and z_hi >= max(slab(s)[1] for s in clean.values()) - 4
    )
    assert set(np.unique(labels)) == set(synth.REGION_LABELS)
    table = pd.read_csv(paths["label_table"], sep="\t")
    assert dict(zip(table["value"], table["name"])) == synth.REGION_LABELS
    assert set(table.loc[table["age_region"] == 1, "name"]) == set(synth.AGE_REGIONS)


def tissue_agreement(series, affine, labels) -> dict[str, float]:
    """Share of DICOM voxels, in the interior of a truth region, whose intensities fit that region."""
    interior = ndimage.minimum_filter(labels, 3) == ndimage.maximum_filter(labels, 3)
    found = defaultdict(list)
    for station in (2, 3):
        # End slices carry the folding ghost; readers cut them, so does this check.
        group = {c: volume(s[1:-1]) for c, s in station_series(series, station).items()}
        x, y, z = lps_axes(station_series(series, station)["W"][1:-1])
        X, Y, Z = np.meshgrid(x, y, z, indexing="ij")
        ras = np.stack([-X, -Y, Z], -1)
        ijk = np.rint(nib.affines.apply_affine(np.linalg.inv(affine), ras)).astype(int)
        inside = np.all((ijk >= 0) & (ijk < labels.shape), axis=-1)
        i, j, k = (np.clip(ijk[..., n], 0, labels.shape[n] - 1) for n in range(3))
        truth = np.where(inside & interior[i, j, k], labels[i, j, k], 255)
        w, f, ip = group["W"], group["F"], group["in"]
        for name, fits in (
            ("lung", ip < 0.12 * synth.INTENSITY),
            ("subcutaneous_fat", f > 2 * w),
            ("heart", (w > 2 * f) & (ip > 0.12 * synth.INTENSITY)),
            ("liver", (w > 2 * f) & (ip > 0.12 * synth.INTENSITY)),
        ):
            found[name].extend(fits[truth == LABEL[name]].tolist())
    return {name: float(np.mean(v)) for name, v in found.items() if v}


def test_truth_and_dicom_share_one_world_frame(tmp_path, participant, clean):
    image = nib.load(synth.write_truth(tmp_path, participant)["label_map"])
    labels = np.asarray(image.dataobj)
    good = tissue_agreement(clean, image.affine, labels)
    assert set(good) == {"lung", "subcutaneous_fat", "heart", "liver"}
    assert min(good.values()) > 0.9, good
    # A left-right mirror of the affine puts the heart into the right lung: the check must catch it.
    mirrored = np.diag([-1.0, 1.0, 1.0, 1.0]) @ image.affine
    assert tissue_agreement(clean, mirrored, labels)["heart"] < 0.5


# ----------------------------------------------------------------------------- defects
DEFECT_SCALE = 0.1  # defects are about structure, not anatomy: smaller is faster


@pytest.fixture(scope="module")
def small_clean(participant, tmp_path_factory):
    return read_zip(write(tmp_path_factory.mktemp("small"), participant, scale=DEFECT_SCALE))


def stations_present(series) -> dict[int, set[str]]:
    """Contrasts found per station, the station told by the slab centre (stations overlap)."""
    centres = {g.spec.index: g.z_top - (g.slices - 1) * g.dz / 2 for g in synth._station_grids(1.0)}
    found = defaultdict(set)
    for slices in series.values():
        z = np.mean([float(d.ImagePositionPatient[2]) for d in slices])
        station = min(centres, key=lambda k: abs(centres[k] - z))
        found[station].add(slices[0].SeriesDescription.rsplit("_", 1)[1])
    return dict(found)


def defect_zip(tmp_path, participant, *defects) -> Path:
    return write(tmp_path, participant, "defect.zip", defects=defects, scale=DEFECT_SCALE)


def test_short_series(tmp_path, participant, small_clean):
    series = read_zip(defect_zip(tmp_path, participant, "short_series"))
    station = synth.defect_station(participant, "short_series", SEED)
    assert station in (2, 3, 4)
    short = [n for n in series if len(series[n]) != len(small_clean[n])]
    assert len(short) == 1 and len(series[short[0]]) == len(small_clean[short[0]]) - 1
    assert (short[0] - 1) // 4 + 1 == station
    assert (
        series[short[0]][0].ImagePositionPatient == small_clean[short[0]][0].ImagePositionPatient
    )  # the foot end is lost


def test_repeat_station_keeps_the_later_acquisition_clean(tmp_path, participant, small_clean):
    series = read_zip(defect_zip(tmp_path, participant, "repeat_station"))
    station = synth.defect_station(participant, "repeat_station", SEED)
    assert sorted(series) == list(range(1, 29))
    last_time = max(float(s[0].SeriesTime) for n, s in series.items() if n <= 24)
    for c, contrast in enumerate(layout.CONTRASTS):
        first, repeat = series[4 * (station - 1) + c + 1], series[25 + c]
        assert repeat[0].SeriesDescription == first[0].SeriesDescription
        assert [d.ImagePositionPatient for d in repeat] == [d.ImagePositionPatient for d in first]
        assert float(repeat[0].SeriesTime) > last_time
        assert np.array_equal(volume(repeat), volume(small_clean[4 * (station - 1) + c + 1]))
        a, b = volume(first), volume(repeat)
        assert np.abs(a - b).mean() > 0.2 * b.mean()  # visibly worse first acquisition
    for n in range(1, 25):
        if (n - 1) // 4 + 1 != station:
            assert np.array_equal(volume(series[n]), volume(small_clean[n]))


def test_fat_water_swap(tmp_path, participant, small_clean):
    series = read_zip(defect_zip(tmp_path, participant, "fat_water_swap"))
    station = synth.defect_station(participant, "fat_water_swap", SEED)
    f, w = 4 * (station - 1) + 3, 4 * (station - 1) + 4
    assert np.array_equal(volume(series[f]), volume(small_clean[w]))
    assert np.array_equal(volume(series[w]), volume(small_clean[f]))
    assert series[f][0].SeriesDescription.endswith("_F") and series[w][0].SeriesDescription.endswith("_W")
    swapped = [n for n in range(1, 25) if not np.array_equal(volume(series[n]), volume(small_clean[n]))]
    assert swapped == [f, w]


def test_missing_station_and_missing_water(tmp_path, participant):
    series = read_zip(defect_zip(tmp_path, participant, "missing_station"))
    station = synth.defect_station(participant, "missing_station", SEED)
    assert len(series) == 20 and station not in stations_present(series)
    series = read_zip(defect_zip(tmp_path, participant, "missing_water"))
    station = synth.defect_station(participant, "missing_water", SEED)
    present = stations_present(series)
    assert len(series) == 23 and present[station] == {"in", "opp", "F"}
    assert all(present[k] == set(layout.CONTRASTS) for k in present if k != station)


def test_bad_orientation(tmp_path, participant):
    series = read_zip(defect_zip(tmp_path, participant, "bad_orientation"))
    station = synth.defect_station(participant, "bad_orientation", SEED)
    for n, slices in series.items():
        iop = [float(v) for v in slices[0].ImageOrientationPatient]
        assert (iop != [1, 0, 0, 0, 1, 0]) == ((n - 1) // 4 + 1 == station)


def _manifest(zf):
    return zf.read(next(n for n in zf.namelist() if n.startswith("manifest")))


MEMBER_DEFECTS = {
    "non_dicom_member": lambda zf: any(
        re.fullmatch(r"[0-9.]+\.dcm", n) and zf.read(n).startswith(b"ageatlas synthetic")
        for n in zf.namelist()
    ),
    "path_traversal_member": lambda zf: "../evil.dcm" in zf.namelist(),
    "no_manifest": lambda zf: not any(n.startswith("manifest") for n in zf.namelist()),
    "manifest_cvs": lambda zf: "manifest.cvs" in zf.namelist() and "manifest.csv" not in zf.namelist(),
    "garbled_manifest": lambda zf: b"series discription" not in _manifest(zf),
}


@pytest.mark.parametrize("defect", sorted(MEMBER_DEFECTS))
def test_member_defects(tmp_path, participant, defect):
    path = defect_zip(tmp_path, participant, defect)
    with zipfile.ZipFile(path) as zf:
        assert MEMBER_DEFECTS[defect](zf)
    assert len(read_zip(path)) == 24  # the images themselves are intact


def test_broken_zips(tmp_path, participant):
    truncated = defect_zip(tmp_path, participant, "truncated_zip")
    whole = write(tmp_path, participant, "whole.zip", scale=DEFECT_SCALE)
    assert abs(truncated.stat().st_size - whole.stat().st_size / 2) <= 1
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(truncated)
    empty = write(tmp_path, participant, "empty.zip", defects=["empty_zip"])
    with zipfile.ZipFile(empty) as zf:
        assert zf.namelist() == []
    zero = write(tmp_path, participant, "zero.zip", defects=["zero_bytes", "missing_water"])
    assert zero.stat().st_size == 0


def test_defects_combine_and_unknown_ones_are_refused(tmp_path, participant):
    path = defect_zip(tmp_path, participant, "missing_water", "manifest_cvs", "non_dicom_member")
    series = read_zip(path)
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    assert len(series) == 23 and "manifest.cvs" in names
    assert len(names) == sum(len(s) for s in series.values()) + 2
    with pytest.raises(ValueError, match="unknown defect"):
        synth.write_participant_zip(tmp_path / "x.zip", participant, defects=["fat_water_swapp"])
    assert set(synth.DEFECTS) >= {"short_series", "repeat_station", "empty_zip", "zero_bytes", "manifest_cvs"}


# ----------------------------------------------------------------------------- cohort folder
def test_write_cohort(tmp_path):
    cohort = synth.make_cohort(3, seed=5)
    bad = cohort[1].eid
    synth.write_cohort(
        tmp_path, cohort, scale=0.03, defects_by_eid={bad: ["missing_station", "no_manifest"]}, seed=2
    )
    for p in cohort:
        assert (tmp_path / layout.zip_name(p.eid)).stat().st_size > 0
        assert (tmp_path / "truth" / f"{p.eid}_regions.nii.gz").exists()
    assert (tmp_path / "truth" / "regions.tsv").exists()
    pheno = pd.read_csv(tmp_path / "phenotypes.csv")
    assert pheno.equals(synth.phenotype_table(cohort))
    truth = pd.read_csv(tmp_path / "truth.tsv", sep="\t", keep_default_na=False)
    assert list(truth.columns) == ["eid", "sex", "age", "bmi", "age_offset", "biological_age", "defects"]
    assert truth.set_index("eid").loc[bad, "defects"] == "missing_station,no_manifest"
    assert truth["biological_age"].tolist() == pytest.approx([p.biological_age for p in cohort])
    with pytest.raises(ValueError):
        synth.write_cohort(tmp_path, cohort, scale=0.03, defects_by_eid={42: ["empty_zip"]})
