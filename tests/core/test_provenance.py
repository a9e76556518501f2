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
    marks = ("provenance.record(snakemake", "run_for_rule(snakemake,")
    missing = [
        name for name in expected if not any(mark in by_name[name].read_text() for mark in marks)
    ]
    assert not missing, f"scripts without provenance.record(snakemake): {missing}"


# ---- the model behind an output ----------------------------------------------


class Files(list):
    """Enough of snakemake's named input/output lists: a list whose names are attributes."""

    def __init__(self, positional=(), **named):
        super().__init__([str(p) for p in positional] + [str(p) for p in named.values()])
        for name, path in named.items():
            setattr(self, name, str(path))


def named_job(outputs, inputs, rule="predict_age"):
    return SimpleNamespace(
        input=inputs, output=outputs, wildcards=Wildcards(), config={"seed": 1}, rule=rule
    )


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "model" / "checkpoint.pt"
    path.parent.mkdir()
    path.write_bytes(b"weights" * 1000)
    return path


def test_a_checkpoints_hash_is_computed_once_per_path_and_mtime(checkpoint, monkeypatch):
    record = provenance.model_record(checkpoint)
    assert record == {
        "checkpoint": str(checkpoint),
        "sha256": provenance.sha256_file(checkpoint),
        "source": provenance.TRAINED_HERE,
        "size": 7000,
    }
    stored = json.loads(provenance.model_record_path(checkpoint).read_text())
    assert stored["sha256"] == record["sha256"] and "mtime_ns" in stored
    # Another job (a new process: no in-memory cache) reads the stored hash, never the file.
    provenance._cached_model_record.cache_clear()
    monkeypatch.setattr(provenance, "sha256_file", lambda path: pytest.fail("hashed again"))
    assert provenance.model_record(checkpoint) == record
    # A changed file (size or mtime) is hashed again.
    monkeypatch.undo()
    checkpoint.write_bytes(b"other weights")
    changed = provenance.model_record(checkpoint)
    assert changed["sha256"] == provenance.sha256_file(checkpoint) != record["sha256"]


def test_an_installed_checkpoint_is_a_hashed_copy_recorded_as_given(tmp_path, checkpoint):
    installed = tmp_path / "run" / "age" / "model" / "checkpoint.pt"
    record = provenance.install_checkpoint(checkpoint, installed)
    assert installed.read_bytes() == checkpoint.read_bytes()
    assert record["source"] == provenance.GIVEN and record["given"] == str(checkpoint.resolve())
    assert record["sha256"] == provenance.sha256_file(checkpoint)
    assert provenance.model_record(installed)["given"] == str(checkpoint.resolve())
    assert sorted(p.name for p in installed.parent.iterdir()) == [
        "checkpoint.pt",
        "checkpoint.pt.model.json",
    ]  # no temporary file left behind


def test_model_outputs_name_their_model_down_to_the_maps(tmp_path, checkpoint):
    """Predictions name the checkpoint they read; the bias correction joins; a map made from a
    Grad-CAM map and the ageing classes names the model once, with its correction."""
    model = provenance.model_record(checkpoint)
    predictions, corrected = tmp_path / "predictions.tsv", tmp_path / "corrected.tsv"
    cam, classes, mean = tmp_path / "cam.nii.gz", tmp_path / "classes.tsv", tmp_path / "m.nii.gz"
    for path in (predictions, corrected, cam, classes, mean):
        path.write_text("x")
    provenance.record(named_job([predictions], Files(checkpoint=checkpoint)))
    assert provenance.read_sidecar(predictions)["models"] == [model]

    correction = {"source": "given", "path": "/elsewhere/bias_correction.json"}
    provenance.record(named_job([corrected], Files([predictions])), bias_correction=correction)
    assert provenance.read_sidecar(corrected)["models"] == [model | {"bias_correction": correction}]

    provenance.record(named_job([cam], Files(checkpoint=checkpoint, cache=tmp_path / "c.npy")))
    provenance.record(named_job([classes], Files([corrected])))
    provenance.record(named_job([mean], Files(classes=classes, warped=cam)))
    assert provenance.read_sidecar(mean)["models"] == [model | {"bias_correction": correction}]


def test_outputs_of_two_models_name_both_and_others_none(tmp_path, checkpoint):
    other = tmp_path / "baseline.pt"
    other.write_bytes(b"vgg")
    a, b, table, qc = (tmp_path / n for n in ("a.tsv", "b.tsv", "table1.tsv", "qc.tsv"))
    for path in (a, b, table, qc):
        path.write_text("x")
    provenance.record(named_job([a], Files(checkpoint=checkpoint)))
    provenance.record(named_job([b], Files(checkpoint=other)))
    provenance.record(named_job([table], Files(predictions=a, baseline_predictions=b)))
    names = [m["checkpoint"] for m in provenance.read_sidecar(table)["models"]]
    assert names == [str(checkpoint), str(other)]
    provenance.record(named_job([qc], Files([tmp_path / "phenotypes.csv"])))
    assert "models" not in provenance.read_sidecar(qc)
