import pytest

from ageatlas import qc


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


def test_participant_table_takes_worst_stage_and_keeps_all_reasons():
    records = [
        qc.QCRecord("2", "phenotypes", qc.WARNING, ["eid appears 2 times"]),
        qc.QCRecord("2", "ingest", qc.EXCLUDED, ["zip truncated"]),
        qc.QCRecord("10", "ingest", qc.OK, []),
        qc.QCRecord("3", "phenotypes", qc.EXCLUDED, ["missing bmi"]),
    ]
    table = qc.participant_table(records)
    assert list(table["eid"]) == ["2", "3", "10"]
    row = table.set_index("eid").loc["2"]
    assert row["status"] == qc.EXCLUDED and row["stage"] == "ingest"
    assert row["reasons"] == "phenotypes: eid appears 2 times; ingest: zip truncated"
    assert table.set_index("eid").loc["10", "status"] == qc.OK


def test_records_round_trip_through_tsv(tmp_path):
    records = [qc.QCRecord("5", "phenotypes", qc.EXCLUDED, ["a", "b"])]
    qc.records_frame(records).to_csv(tmp_path / "r.tsv", sep="\t", index=False)
    assert qc.read_records_tsv(tmp_path / "r.tsv") == records


def test_too_many_excluded_raises_with_examples():
    records = [qc.QCRecord(str(i), "ingest", qc.EXCLUDED, ["bad zip"]) for i in range(3)]
    records.append(qc.QCRecord("9", "ingest"))
    qc.check_excluded_fraction(records, "ingest", 0.8)
    with pytest.raises(qc.TooManyExcluded, match="3 of 4 .*bad zip"):
        qc.check_excluded_fraction(records, "ingest", 0.5)


def test_save_nifti_int16_keeps_intensities_and_geometry(tmp_path):
    import nibabel as nib
    import numpy as np

    from ageatlas.ingest import save_nifti

    rng = np.random.default_rng(0)
    image = (rng.random((8, 6, 5)) * 3000).astype(np.float32)
    affine = np.diag([2.232, 2.232, 3.0, 1.0])
    affine[:3, 3] = [-250, -190, -1000]
    save_nifti(tmp_path / "x.nii.gz", image, affine, "test", dtype=np.int16)
    back = nib.load(tmp_path / "x.nii.gz")
    assert back.get_data_dtype() == np.int16
    assert np.abs(back.get_fdata() - image).max() < 3000 / 30000
    assert np.allclose(back.affine, affine) and int(back.header["sform_code"]) == 1


def test_registration_table_reads_records(tmp_path):
    import json

    from ageatlas.qc import REGISTRATION_COLUMNS, registration_table

    ok = {"eid": "1", "group": "F_healthy", "status": "ok", "reasons": [], "before": {"ncc": 0.8},
          "affine": {"ncc": 0.9}, "deformable": {"ncc": 0.95}, "folding_share": 0.0, "seconds": 3.0}
    failed = {"status": "failed", "reasons": ["OSError: cannot read"]}
    (tmp_path / "1.json").write_text(json.dumps(ok))
    (tmp_path / "2.json").write_text(json.dumps(failed))
    table = registration_table([tmp_path / "1.json", tmp_path / "2.json"])
    assert list(table.columns) == list(REGISTRATION_COLUMNS)
    assert table["eid"].tolist() == ["1", "2"] and table["status"].tolist() == ["ok", "failed"]
    assert table.loc[1, "reasons"] == "OSError: cannot read" and table.loc[0, "ncc_deformable"] == 0.95
