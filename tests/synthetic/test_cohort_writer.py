"""A cohort folder holds every zip, the phenotypes and the truth files."""

from __future__ import annotations

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
