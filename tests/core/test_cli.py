"""`ageatlas where --eid`: the batch manifests that hold a participant, to force its rerun."""

import yaml

from ageatlas import cli
from ageatlas.core.batch_run import write_manifest


def test_where_eid_lists_the_batches_that_handled_the_participant(tmp_path):
    results = tmp_path / "results"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"results_dir": str(results)}))
    row = {"eid": "1000001", "status": "done", "seconds": 1.0, "error": "", "log": "x.log"}
    stitch = results / "ingest" / "batches" / "stitch" / "1of4.tsv"
    register = results / "explain" / "F_obese" / "batches" / "register" / "0of1.tsv"
    write_manifest(stitch, [row])
    write_manifest(register, [dict(row, status="failed", error="ValueError: bad")])
    write_manifest(stitch.with_name("0of4.tsv"), [dict(row, eid="1000004")])
    text = cli.participant_batches(str(config), "1000001")
    assert str(stitch) in text and str(register) in text
    assert "0of4" not in text and "failed  ValueError: bad" in text
    assert "in none of the 3" in cli.participant_batches(str(config), "1000009")
