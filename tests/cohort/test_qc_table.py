import pytest

from ageatlas.cohort import qc_table
from ageatlas.core import qc


def test_participant_table_takes_worst_stage_and_keeps_all_reasons():
    records = [
        qc.QCRecord("2", "phenotypes", qc.WARNING, ["eid appears 2 times"]),
        qc.QCRecord("2", "ingest", qc.EXCLUDED, ["zip truncated"]),
        qc.QCRecord("10", "ingest", qc.OK, []),
        qc.QCRecord("3", "phenotypes", qc.EXCLUDED, ["missing bmi"]),
    ]
    table = qc_table.participant_table(records)
    assert list(table["eid"]) == ["2", "3", "10"]
    row = table.set_index("eid").loc["2"]
    assert row["status"] == qc.EXCLUDED and row["stage"] == "ingest"
    assert row["reasons"] == "phenotypes: eid appears 2 times; ingest: zip truncated"
    assert table.set_index("eid").loc["10", "status"] == qc.OK


def test_too_many_excluded_raises_with_examples():
    records = [qc.QCRecord(str(i), "ingest", qc.EXCLUDED, ["bad zip"]) for i in range(3)]
    records.append(qc.QCRecord("9", "ingest"))
    qc_table.check_excluded_fraction(records, "ingest", 0.8)
    with pytest.raises(qc_table.TooManyExcluded, match="3 of 4 .*bad zip"):
        qc_table.check_excluded_fraction(records, "ingest", 0.5)


def test_a_participant_whose_stitch_batch_failed_is_an_excluded_row(tmp_path):
    from ageatlas.cohort.qc_table import ingest_records
    from ageatlas.core.batch_run import write_manifest

    good = tmp_path / "1000001"
    good.mkdir()
    qc.QCRecord("1000001", "ingest").write_json(good / "qc.json")
    manifest = tmp_path / "0of1.tsv"
    write_manifest(
        manifest,
        [
            {"eid": "1000001", "status": "done", "seconds": 1, "error": "", "log": "a.log"},
            {"eid": "1000002", "status": "failed", "seconds": 1, "error": "MemoryError: x"},
        ],
    )
    records = ingest_records([good, tmp_path / "1000002"], [manifest], "ingest", "qc.json")
    assert [(r.eid, r.status) for r in records] == [("1000001", "ok"), ("1000002", "excluded")]
    assert "MemoryError" in records[1].reasons[0]
    with pytest.raises(ValueError, match="1000003"):
        ingest_records([tmp_path / "1000003"], [manifest], "ingest", "qc.json")
