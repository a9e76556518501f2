"""A cohort folder holds every zip, the phenotypes and the truth files."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from ageatlas.core import field20201 as layout
from ageatlas.synthetic.cohort_writer import write_cohort
from ageatlas.synthetic.participants import make_cohort, phenotype_table


def test_write_cohort(tmp_path):
    cohort = make_cohort(3, seed=5)
    bad = cohort[1].eid
    write_cohort(
        tmp_path,
        cohort,
        scale=0.03,
        defects_by_eid={bad: ["missing_station", "no_manifest"]},
        seed=2,
    )
    for p in cohort:
        assert (tmp_path / layout.zip_name(p.eid)).stat().st_size > 0
        assert (tmp_path / "truth" / f"{p.eid}_regions.nii.gz").exists()
    assert (tmp_path / "truth" / "regions.tsv").exists()
    pheno = pd.read_csv(tmp_path / "phenotypes.csv")
    assert pheno.equals(phenotype_table(cohort))
    truth = pd.read_csv(tmp_path / "truth.tsv", sep="\t", keep_default_na=False)
    assert list(truth.columns) == [
        "eid",
        "sex",
        "age",
        "bmi",
        "age_offset",
        "biological_age",
        "table_offset_x_mm",
        "table_offset_y_mm",
        "table_offset_z_mm",
        "defects",
    ]
    assert truth.set_index("eid").loc[bad, "defects"] == "missing_station,no_manifest"
    assert truth["biological_age"].tolist() == pytest.approx([p.biological_age for p in cohort])
    with pytest.raises(ValueError):
        write_cohort(tmp_path, cohort, scale=0.03, defects_by_eid={42: ["empty_zip"]})


def test_write_cohort_is_the_same_with_workers(tmp_path):
    """Participants written side by side by two processes are the serial writer's, byte for
    byte (zips) and voxel for voxel (label maps), with one label table."""
    cohort = make_cohort(3, seed=11)
    defects = {cohort[0].eid: ["fat_water_swap"]}
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    write_cohort(serial, cohort, scale=0.03, defects_by_eid=defects, seed=4)
    write_cohort(parallel, cohort, scale=0.03, defects_by_eid=defects, seed=4, workers=2)
    for p in cohort:
        name = layout.zip_name(p.eid)
        assert (parallel / name).read_bytes() == (serial / name).read_bytes()
        label_map = f"truth/{p.eid}_regions.nii.gz"
        a, b = nib.load(serial / label_map), nib.load(parallel / label_map)
        assert np.array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
        assert np.array_equal(a.affine, b.affine)
    for name in ("truth/regions.tsv", "phenotypes.csv", "truth.tsv"):
        assert (parallel / name).read_bytes() == (serial / name).read_bytes()
