"""Synthetic cohorts: balanced, spread, deterministic, with UK Biobank phenotype columns."""

from __future__ import annotations

import numpy as np
import pytest

from ageatlas.synthetic.participants import make_cohort, phenotype_table


def test_make_cohort_is_balanced_spread_and_deterministic():
    cohort = make_cohort(60, seed=3)
    assert cohort == make_cohort(60, seed=3)
    assert cohort != make_cohort(60, seed=4)
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
        make_cohort(10, seed=0, first_eid=9_999_995)


def test_phenotype_table_uses_ukbb_columns():
    cohort = make_cohort(6, seed=1)
    table = phenotype_table(cohort)
    assert list(table.columns) == ["eid", "31-0.0", "21003-2.0", "21001-2.0"]
    assert table["eid"].tolist() == [p.eid for p in cohort]
    assert table["31-0.0"].tolist() == [p.sex for p in cohort]
    assert table["21003-2.0"].dtype == float and table["21001-2.0"].dtype == float


def test_table_offsets_vary_per_participant_and_change_nothing_else():
    still = make_cohort(200, seed=3)
    placed = make_cohort(200, seed=3, position_sd_mm=(10.0, 3.0, 20.0))
    assert all(p.table_offset_mm == (0.0, 0.0, 0.0) for p in still)
    offsets = np.array([p.table_offset_mm for p in placed])
    assert np.allclose(offsets.std(axis=0), [10.0, 3.0, 20.0], rtol=0.25)
    assert np.all(np.abs(offsets) <= np.array([20.0, 6.0, 40.0]) + 0.05)  # clipped at 2 s.d.
    assert [replace_offset(p) for p in placed] == still
    with pytest.raises(ValueError, match="position_sd_mm"):
        make_cohort(10, seed=0, position_sd_mm=(1.0, -1.0, 0.0))


def replace_offset(p):
    from dataclasses import replace

    return replace(p, table_offset_mm=(0.0, 0.0, 0.0))
