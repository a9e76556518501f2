"""Provenance sidecars: version, git commit, config hash and inputs of every table and map."""

import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

import ageatlas
from ageatlas.core import provenance

REPO = Path(__file__).resolve().parents[2]


class Wildcards(dict):
    """Enough of snakemake's Wildcards for provenance.record (items())."""


def fake_job(tmp_path, outputs, inputs, config=None, wildcards=None):
    return SimpleNamespace(
        input=[str(p) for p in inputs],
        output=[str(p) for p in outputs],
        wildcards=Wildcards(wildcards or {}),
        config=config if config is not None else {"seed": 1, "maps": {"threshold": 0.2}},
        rule="population_map",
    )


def test_config_hash_is_canonical():
    a = {"seed": 1, "maps": {"alpha": 0.05, "threshold": 0.2}}
    b = {"maps": {"threshold": 0.2, "alpha": 0.05}, "seed": 1}
    assert provenance.config_hash(a) == provenance.config_hash(b)
    assert provenance.config_hash(a) != provenance.config_hash(a | {"seed": 2})
    assert len(provenance.config_hash(a)) == 64


def test_git_state_names_the_checkout_commit():
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    if head.returncode != 0:
        pytest.fail("tests run from a git checkout (CI clones it)")
    state = provenance.git_state(str(REPO / "src" / "ageatlas"))
    assert state["commit"] == head.stdout.strip()
    assert state["dirty"] in (True, False)


def test_git_state_outside_a_checkout_is_unknown(tmp_path, monkeypatch):
    assert provenance.git_state(str(tmp_path)) == {"commit": "unknown", "dirty": None}
    # No git at all (a bare compute node): still no error.
    monkeypatch.setenv("PATH", str(tmp_path))
    assert provenance._git(tmp_path, "rev-parse", "HEAD") is None


def test_record_writes_sidecars_for_tables_and_maps_only(tmp_path):
    small = tmp_path / "classes.tsv"
    small.write_text("eid\tgroup\n1\tF_healthy\n")
    folder = tmp_path / "stitched" / "1"
    folder.mkdir(parents=True)
    (folder / "qc.json").write_text("{}")
    outputs = [
        tmp_path / "all_mean.nii.gz",
        tmp_path / "all.json",
        tmp_path / "t.tsv",
        tmp_path / "fig.png",
    ]
    for path in outputs:
        path.write_bytes(b"x" * 10)
    job = fake_job(
        tmp_path,
        outputs,
        [small, folder, tmp_path / "gone.nii.gz"],
        wildcards={"group": "F_healthy", "subset": "all"},
    )
    written = provenance.record(job)
    assert sorted(p.name for p in written) == ["all_mean.nii.gz.prov.json", "t.tsv.prov.json"]
    assert (
        not (tmp_path / "all.json.prov.json").exists()
        and not (tmp_path / "fig.png.prov.json").exists()
    )

    record = provenance.read_sidecar(outputs[0])
    assert record["package"] == "ageatlas" and record["version"] == ageatlas.__version__
    assert record["git_commit"] == provenance.git_state()["commit"]
    assert record["config_sha256"] == provenance.config_hash(job.config)
    assert record["rule"] == "population_map"
    assert record["wildcards"] == {"group": "F_healthy", "subset": "all"}
    assert record["output"]["path"] == str(outputs[0]) and record["output"]["size"] == 10
    by_path = {entry["path"]: entry for entry in record["inputs"]}
    assert by_path[str(small)]["size"] == small.stat().st_size
    assert by_path[str(small)]["sha256"] == provenance.sha256_file(small)
    assert by_path[str(folder)]["directory"] is True and by_path[str(folder)]["files"] == 1
    assert by_path[str(tmp_path / "gone.nii.gz")]["missing"] is True
    # Both sidecars of one job carry the same record but their own output.
    other = json.loads((tmp_path / "t.tsv.prov.json").read_text())
    assert other["inputs"] == record["inputs"] and other["output"]["path"] == str(outputs[2])


def test_large_inputs_are_not_hashed(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "HASH_LIMIT", 4)
    big = tmp_path / "warped.nii.gz"
    big.write_bytes(b"12345678")
    entry = provenance.describe_file(big)
    assert entry["size"] == 8 and "sha256" not in entry and entry["mtime"].endswith("+00:00")


def test_record_without_tables_writes_nothing(tmp_path):
    out = tmp_path / "transform.pt"
    out.write_bytes(b"")
    assert provenance.record(fake_job(tmp_path, [out], [])) == []
    assert os.listdir(tmp_path) == ["transform.pt"]


def test_every_script_writing_tables_or_maps_records_provenance():
    """The workflow scripts whose rules write .tsv/.md/.nii.gz outputs end with
    provenance.record; batch rules' scripts run through batch_run.run_for_rule, which writes
    each participant's sidecars and the manifest's."""
    scripts = REPO / "workflow" / "scripts"
    expected = [
        "phenotype_qc",
        "qc_table",
        "cohort_table",
        "predict_age",
        "correct_bias",
        "table1",
        "train_age_model",
        "ageing_classes",
        "gradcam",
        "atlas_init",
        "atlas_update",
        "atlas_register",
        "copy_atlas",
        "warp_gradcam",
        "registration_qc",
        "population_map",
        "class_test",
        "truth_summary",
    ]
    by_name = {path.stem: path for path in scripts.rglob("*.py")}
    marks = ("provenance.record(snakemake)", "run_for_rule(snakemake,")
    missing = [
        name for name in expected if not any(mark in by_name[name].read_text() for mark in marks)
    ]
    assert not missing, f"scripts without provenance.record(snakemake): {missing}"
