"""One participant, zip to stitched NIfTI: outputs, geometry in other readers, and failure paths."""

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from ageatlas.ingest import participant as ingest
from ageatlas.ingest.grid import Grid
from ageatlas.ingest.stitch import StitchOptions
from ageatlas.synthetic.dicom import write_participant_zip
from ageatlas.synthetic.participants import make_cohort

GRID = Grid((45, 35, 74), (11.16, 11.16, 15.0))


@pytest.fixture(scope="module")
def person_zip(tmp_path_factory):
    person = make_cohort(1, seed=11)[0]
    path = tmp_path_factory.mktemp("zips") / f"{person.eid}_20201_2_0.zip"
    write_participant_zip(path, person, scale=0.2, seed=11)
    return str(person.eid), path


def test_writes_images_preview_and_qc(tmp_path, person_zip):
    eid, zip_path = person_zip
    record = ingest.ingest_participant(eid, zip_path, tmp_path / eid, GRID, StitchOptions())
    assert record.passed
    assert json.loads((tmp_path / eid / "qc.json").read_text())["status"] == record.status
    for contrast in ("W", "F"):
        assert ingest.stitched_path(tmp_path / eid, eid, contrast).exists()
    assert (tmp_path / eid / f"{eid}_preview.png").exists()


def test_other_readers_agree_on_geometry(tmp_path, person_zip):
    """ITK (ITK-SNAP) and nilearn must place every voxel where nibabel does."""
    from nilearn.image import load_img

    eid, zip_path = person_zip
    ingest.ingest_participant(eid, zip_path, tmp_path, GRID, StitchOptions(), preview=False)
    path = str(ingest.stitched_path(tmp_path, eid, "W"))
    affine = nib.load(path).affine
    itk = sitk.ReadImage(path)
    voxel = (3, 5, 7)
    ras = affine @ [*voxel, 1]
    lps = itk.TransformIndexToPhysicalPoint(voxel)
    np.testing.assert_allclose(lps, [-ras[0], -ras[1], ras[2]], atol=1e-3)
    np.testing.assert_allclose(
        sitk.GetArrayFromImage(itk).transpose(2, 1, 0), nib.load(path).get_fdata(), atol=1e-3
    )
    np.testing.assert_allclose(load_img(path).affine, affine)


def test_unexpected_error_is_excluded_not_raised(tmp_path, person_zip, monkeypatch):
    eid, zip_path = person_zip

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(ingest.stitch, "stitch", broken)
    record = ingest.ingest_participant(eid, zip_path, tmp_path, GRID, StitchOptions())
    assert record.status == "excluded"
    assert "unexpected error" in record.reasons[0] and "boom" in record.reasons[0]
    assert not list(tmp_path.glob("*.nii.gz")) and (tmp_path / "qc.json").exists()


def test_data_defect_is_excluded_with_the_readers_reason(tmp_path):
    person = make_cohort(1, seed=12)[0]
    zip_path = tmp_path / f"{person.eid}_20201_2_0.zip"
    write_participant_zip(zip_path, person, scale=0.2, seed=12, defects=["missing_station"])
    record = ingest.ingest_participant(
        str(person.eid), zip_path, tmp_path / "out", GRID, StitchOptions()
    )
    assert record.status == "excluded"
    assert zip_path.name in record.reasons[0] and "station" in record.reasons[0]


def test_stitch_section_becomes_grid_options_and_preview():
    section = {
        "grid": {"shape": [56, 44, 92], "spacing": [8.928, 8.928, 12.0]},
        "trim_slices": 3,
        "blend": "linear",
        "harmonise": False,
        "fix_swaps": True,
        "n4": False,
        "contrasts": ["W", "F"],
        "preview": False,
    }
    grid, options, preview = ingest.settings_from_config(section)
    assert grid == Grid((56, 44, 92), (8.928, 8.928, 12.0))
    assert (options.trim_slices, options.blend, options.harmonise) == (3, "linear", False)
    assert options.fix_swaps and not options.n4 and options.contrasts == ("W", "F")
    assert preview is False
