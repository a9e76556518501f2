"""Groups, age bands and the balanced train/val/test split (cohort.cohort_table)."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ageatlas.cohort import table as cohort

PAPER = {"train": 1536, "val": 384, "test": 1200}


def population(n=3120, seed=0, short=None):
    """Random participants; ``short={(sex, bmi_group): k}`` keeps only k of a group."""
    rng = np.random.default_rng(seed)
    table = pd.DataFrame(
        {
            "eid": 1_000_000 + rng.permutation(n * 3)[:n],
            "sex": rng.integers(0, 2, n),
            "age": np.round(rng.uniform(46, 81, n), 1),
            "bmi": rng.choice([22.0, 27.0, 33.0], n) + rng.uniform(-2, 2, n),
        }
    )
    for (sex, group), k in (short or {}).items():
        rows = table.index[(table["sex"] == sex) & (cohort.bmi_group(table["bmi"]) == group)]
        table = table.drop(rows[k:])
    return table.reset_index(drop=True)


@pytest.fixture(scope="module")
def paper_split():
    return cohort.cohort_table(population(), PAPER, seed=42)


def test_bmi_and_age_edges_go_to_the_upper_bin():
    assert list(cohort.bmi_group([24.99, 25.0, 29.99, 30.0])) == [
        "healthy",
        "overweight",
        "overweight",
        "obese",
    ]
    assert list(cohort.age_band([59.99, 60.0, 69.99, 70.0])) == ["lt60", "60to70", "60to70", "ge70"]
    assert list(cohort.bmi_group([26.0], cutoffs=(27.0, 28.0))) == ["healthy"]


def test_binning_keeps_the_index_and_rejects_missing_values():
    labels = cohort.age_band(pd.Series([50.0, 75.0], index=[7, 3]))
    assert list(labels.index) == [7, 3]
    with pytest.raises(ValueError, match="BMI: 1 value"):
        cohort.bmi_group([22.0, float("nan")])
    with pytest.raises(ValueError, match="strictly increasing"):
        cohort.age_band([50.0], edges=(70.0, 60.0))


def test_group_names_are_stable():
    assert cohort.group_names() == [
        "F_healthy",
        "F_overweight",
        "F_obese",
        "M_healthy",
        "M_overweight",
        "M_obese",
    ]


def test_split_sizes_from_counts_and_fractions():
    assert cohort.split_sizes(3120, PAPER) == PAPER
    assert cohort.split_sizes(3120, {"train": 0.4923, "val": 0.1231, "test": 0.3846}) == PAPER
    sizes = cohort.split_sizes(7, {"train": 0.5, "val": 0.25, "test": 0.25})
    assert sum(sizes.values()) == 7 and list(sizes) == ["train", "val", "test"]


@pytest.mark.parametrize(
    "sizes", [{"train": 0, "val": 0, "test": 1}, {"train": 0.0, "val": 0.0, "test": 1.0}]
)
def test_a_given_models_cohort_can_be_all_test(sizes):
    """Integers summing to 1 are fractions: the whole cohort, not one participant."""
    assert cohort.split_sizes(50, sizes) == {"train": 0, "val": 0, "test": 50}
    table = cohort.cohort_table(population(60), sizes, seed=1)
    assert (table["split"] == "test").all() and table.attrs["notes"] == []


def test_empty_splits_as_counts():
    table = cohort.cohort_table(population(60), {"train": 0, "val": 10, "test": 30}, seed=1)
    assert table["split"].value_counts().to_dict() == {"test": 30, "val": 10, "unused": 20}


@pytest.mark.parametrize(
    "sizes, message",
    [
        ({"train": 1536, "val": 384, "test": 1201}, "ask for 3121 participants .* only 3120"),
        ({"train": 0.5, "val": 0.2, "test": 0.2}, "sum to 0.9000, not 1"),
        ({"train": 0.5, "test": 0.5}, r"missing \['val'\]"),
        ({"train": 0.5, "val": 0.25, "test": 0.25, "holdout": 0.0}, r"unknown \['holdout'\]"),
        ({"train": -1, "val": 0, "test": 0}, "train=-1 is not a non-negative number"),
    ],
)
def test_split_sizes_errors_say_what_is_wrong(sizes, message):
    with pytest.raises(ValueError, match=message):
        cohort.split_sizes(3120, sizes)


def test_paper_sizes_are_exact_and_test_is_balanced(paper_split):
    table = paper_split
    assert list(table.columns) == list(cohort.COLUMNS)
    assert table["split"].value_counts().to_dict() == PAPER
    test_counts = table[table["split"] == "test"]["group"].value_counts()
    assert test_counts.to_dict() == {g: 200 for g in cohort.group_names()}
    val_counts = table[table["split"] == "val"]["group"].value_counts()
    assert val_counts.to_dict() == {g: 64 for g in cohort.group_names()}
    assert table["eid"].is_monotonic_increasing and table["eid"].is_unique
    assert set(table["sex"]) == {"F", "M"}
    assert (table["group"] == table["sex"] + "_" + table["bmi_group"]).all()
    assert table.attrs["notes"] == []


def test_splits_follow_each_groups_age_distribution(paper_split):
    for group, members in paper_split.groupby("group"):
        ages = {s: members.loc[members["split"] == s, "age"] for s in cohort.SPLITS}
        # Rank-stratified picks match the group's quantiles far better than a random draw would.
        assert stats.ks_2samp(ages["test"], members["age"]).statistic < 0.03, group
        assert stats.ks_2samp(ages["val"], members["age"]).statistic < 0.06, group
        assert abs(ages["test"].mean() - ages["train"].mean()) < 1.0, group


def test_same_seed_same_table_whatever_the_row_order(paper_split):
    shuffled = population().sample(frac=1, random_state=3)
    pd.testing.assert_frame_equal(cohort.cohort_table(shuffled, PAPER, seed=42), paper_split)
    other = cohort.cohort_table(population(), PAPER, seed=43)
    assert (other["split"] != paper_split["split"]).mean() > 0.3


def test_fractions_use_everyone():
    table = cohort.cohort_table(population(600), {"train": 0.6, "val": 0.2, "test": 0.2}, seed=1)
    assert len(table) == 600
    assert table["split"].value_counts().to_dict() == {"train": 360, "val": 120, "test": 120}
    assert set(table[table["split"] == "test"]["group"].value_counts()) == {20}


def test_a_short_group_gives_all_it_has_and_says_so():
    people = population(600, short={(1, "obese"): 12})
    table = cohort.cohort_table(people, {"train": 0.5, "val": 0.2, "test": 0.3}, seed=5)
    test = table[table["split"] == "test"]["group"].value_counts().to_dict()
    assert test["M_obese"] == 12 and sum(test.values()) == round(0.3 * len(people))
    others = [v for g, v in test.items() if g != "M_obese"]
    assert max(others) - min(others) <= 1 and min(others) > len(people) * 0.3 // 6
    assert (table[table["group"] == "M_obese"]["split"] == "test").all()
    notes = " ".join(table.attrs["notes"])
    assert "test: group M_obese has 12 participants, fewer than its equal share" in notes
    assert "val: group M_obese has 0 participants" in notes


def test_counts_below_the_cohort_mark_the_rest_unused_and_say_so():
    table = cohort.cohort_table(population(900), {"train": 300, "val": 60, "test": 120}, seed=2)
    assert len(table) == 900  # nobody who passed QC disappears
    assert table["split"].value_counts().to_dict() == {
        "train": 300,
        "val": 60,
        "test": 120,
        "unused": 420,
    }
    assert set(table[table["split"] == "train"]["group"].value_counts()) == {50}
    assert "420 of 900 participants are in no split" in table.attrs["notes"][-1]


def test_bad_participants_are_refused():
    people = population(30)
    with pytest.raises(ValueError, match="duplicate eid"):
        cohort.cohort_table(
            pd.concat([people, people.iloc[:1]]), {"train": 0.5, "val": 0.2, "test": 0.3}, 0
        )
    with pytest.raises(ValueError, match="sex code 2"):
        cohort.cohort_table(people.assign(sex=2), {"train": 0.5, "val": 0.2, "test": 0.3}, 0)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['bmi'\]"):
        cohort.cohort_table(people.drop(columns="bmi"), {"train": 0.5, "val": 0.2, "test": 0.3}, 0)


def test_passed_participants_keeps_valid_rows_that_passed_qc(tmp_path, phenotype_schema):
    (tmp_path / "p.csv").write_text(
        "eid,31-0.0,21003-2.0,21001-2.0\n1000001,0,60,24\n1000002,1,61,\n1000003,1,62,31\n1000004,0,50,22\n"
    )
    (tmp_path / "qc.tsv").write_text(
        "eid\tstatus\tstage\treasons\n1000001\tok\t\t\n1000002\texcluded\tphenotypes\tmissing bmi\n"
        "1000003\twarning\tingest\tone slice short\n1000004\texcluded\tingest\ttruncated zip\n"
    )
    from ageatlas.cohort.phenotypes import UKBB_COLUMNS

    kept = cohort.passed_participants(
        tmp_path / "p.csv", phenotype_schema, UKBB_COLUMNS, tmp_path / "qc.tsv"
    )
    assert list(kept["eid"]) == [1000001, 1000003]
    assert list(kept.columns) == ["eid", "sex", "age", "bmi"]


def test_read_participant_tsv_keeps_eids_as_text(tmp_path):
    (tmp_path / "t.tsv").write_text("eid\tage\n0001234\t61.5\n1000002\t70\n")
    table = cohort.read_participant_tsv(tmp_path / "t.tsv")
    assert list(table["eid"]) == ["0001234", "1000002"]  # leading zeros survive: eids name files
    assert table["age"].dtype == float
