"""Phenotype validation: every bad row becomes a QC record naming column and value."""

import pytest

from ageatlas.cohort import phenotypes
from ageatlas.cohort import table as cohort
from ageatlas.core.qc import EXCLUDED, WARNING

HEADER = "eid,31-0.0,21003-2.0,21001-2.0\n"


def write(tmp_path, body, name="pheno.csv"):
    path = tmp_path / name
    path.write_text(HEADER + body)
    return path


def validate(tmp_path, body, schema):
    table = phenotypes.read_table(write(tmp_path, body))
    return phenotypes.validate(table, schema)


def reasons_of(records):
    return {r.eid: (r.status, " ".join(r.reasons)) for r in records}


def test_clean_rows_are_typed(tmp_path, phenotype_schema):
    valid, records = validate(
        tmp_path, "1000001,0,63.5,24.1\n1000002,1,71,31.0\n", phenotype_schema
    )
    assert records == []
    assert list(valid["eid"]) == [1000001, 1000002]
    assert valid["eid"].dtype == "int64" and valid["sex"].dtype == "int64"
    assert valid.loc[1, "bmi"] == pytest.approx(31.0)


@pytest.mark.parametrize(
    "row, expected",
    [
        ("1000001,0,63,", "missing bmi (column 21001-2.0)"),
        ("1000001,2,63,25", "sex code '2' is not one of [0, 1]"),
        ("1000001,0,230,25", "age 230 is above the plausible maximum 110"),
        ("1000001,0,-3,25", "age -3 is below the plausible minimum 18"),
        ("1000001,0,sixty,25", "age 'sixty' is not a number"),
        ("1000001,0.5,60,25", "sex '0.5' is not a whole number"),
    ],
)
def test_bad_cells_are_excluded_with_reason(tmp_path, phenotype_schema, row, expected):
    valid, records = validate(tmp_path, row + "\n1000002,1,60,25\n", phenotype_schema)
    assert list(valid["eid"]) == [1000002]
    status, reason = reasons_of(records)["1000001"]
    assert status == EXCLUDED
    assert expected in reason


def test_duplicates_identical_kept_once_conflicting_excluded(tmp_path, phenotype_schema):
    body = "1000001,0,60,25\n1000001,0,60,25\n1000002,1,60,25\n1000002,1,61,25\n1000003,0,50,20\n"
    valid, records = validate(tmp_path, body, phenotype_schema)
    assert list(valid["eid"]) == [1000001, 1000003]
    got = reasons_of(records)
    assert got["1000001"][0] == WARNING and "2 times" in got["1000001"][1]
    assert got["1000002"][0] == EXCLUDED and "conflicting" in got["1000002"][1]


def test_missing_column_names_file_and_column(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("eid,31-0.0,21003-2.0\n1,0,60\n")
    with pytest.raises(phenotypes.PhenotypeTableError, match=r"p\.csv.*'21001-2\.0' \(bmi\)"):
        phenotypes.read_table(path)


def test_other_column_names_via_config(tmp_path, phenotype_schema):
    path = tmp_path / "p.tsv"
    path.write_text("f.eid\tf.31.0.0\tf.21003.2.0\tf.21001.2.0\n1000001\t1\t55\t27.5\n")
    columns = {"eid": "f.eid", "sex": "f.31.0.0", "age": "f.21003.2.0", "bmi": "f.21001.2.0"}
    valid, records = phenotypes.validate(
        phenotypes.read_table(path, columns), phenotype_schema, columns
    )
    assert records == [] and list(valid["age"]) == [55.0]


def test_unreadable_table_is_a_clear_error(tmp_path):
    path = tmp_path / "p.csv"
    path.write_bytes(b"")
    with pytest.raises(phenotypes.PhenotypeTableError, match="p.csv"):
        phenotypes.read_table(path)


def test_discover_matches_zips_both_ways(tmp_path, phenotype_schema):
    zips = tmp_path / "zips"
    zips.mkdir()
    for name in [
        "1000001_20201_2_0.zip",
        "1000003_20201_2_0.zip",
        "1000001_20201_3_0.zip",
        "notes.txt",
    ]:
        (zips / name).write_bytes(b"")
    pheno = write(tmp_path, "1000001,0,60,25\n1000002,1,60,25\n1000004,1,60,\n")
    found = cohort.discover(pheno, zips, phenotype_schema)
    assert found.eids == ["1000001"]
    assert found.participants.loc[0, "zip"].endswith("1000001_20201_2_0.zip")
    got = reasons_of(found.records)
    assert "no zip 1000002_20201_2_0.zip" in got["1000002"][1]
    assert "has no row in the phenotype table" in got["1000003"][1]
    assert "missing bmi" in got["1000004"][1]  # invalid row: reported once, for its phenotypes
    assert len(found.records) == 3


def test_discover_repeat_visit(tmp_path, phenotype_schema):
    zips = tmp_path / "zips"
    zips.mkdir()
    (zips / "1000001_20201_3_0.zip").write_bytes(b"")
    found = cohort.discover(
        write(tmp_path, "1000001,0,60,25\n"), zips, phenotype_schema, instance=3
    )
    assert found.eids == ["1000001"]


def test_missing_zip_folder_is_named(tmp_path, phenotype_schema):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        cohort.discover(write(tmp_path, "1,0,60,25\n"), tmp_path / "nowhere", phenotype_schema)
