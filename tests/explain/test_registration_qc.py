def test_registration_table_reads_records(tmp_path):
    import json

    from ageatlas.explain.registration_qc import REGISTRATION_COLUMNS, registration_table

    ok = {
        "eid": "1",
        "group": "F_healthy",
        "status": "ok",
        "reasons": [],
        "before": {"ncc": 0.8},
        "affine": {"ncc": 0.9},
        "deformable": {"ncc": 0.95},
        "folding_share": 0.0,
        "seconds": 3.0,
    }
    failed = {"status": "failed", "reasons": ["OSError: cannot read"]}
    (tmp_path / "1.json").write_text(json.dumps(ok))
    (tmp_path / "2.json").write_text(json.dumps(failed))
    table = registration_table([tmp_path / "1.json", tmp_path / "2.json"])
    assert list(table.columns) == list(REGISTRATION_COLUMNS)
    assert table["eid"].tolist() == ["1", "2"] and table["status"].tolist() == ["ok", "failed"]
    assert (
        table.loc[1, "reasons"] == "OSError: cannot read" and table.loc[0, "ncc_deformable"] == 0.95
    )
