from ageatlas.core import qc


def test_record_status_only_worsens(tmp_path):
    rec = qc.QCRecord("1", "ingest")
    assert rec.status == qc.OK and rec.passed
    rec.warn("one slice short")
    assert rec.status == qc.WARNING
    rec.exclude("no water")
    rec.warn("later note")
    assert rec.status == qc.EXCLUDED and not rec.passed
    rec.write_json(tmp_path / "q.json")
    assert qc.QCRecord.read_json(tmp_path / "q.json") == rec


def test_records_round_trip_through_tsv(tmp_path):
    records = [qc.QCRecord("5", "phenotypes", qc.EXCLUDED, ["a", "b"])]
    qc.records_frame(records).to_csv(tmp_path / "r.tsv", sep="\t", index=False)
    assert qc.read_records_tsv(tmp_path / "r.tsv") == records
