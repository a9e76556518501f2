"""What Snakemake plans: inspection before anything ran, and partial reruns of one group.

The partial-rerun tests read the plan of a dry run (`snakemake -n`) on a run
that looks finished: every output of the DAG is created empty (the two
checkpoint tables for real, so the DAG after them is known) and given one
modification time. That costs seconds instead of the minutes of a real run,
and the plan is the same: Snakemake decides from paths and times.
"""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ageatlas.age.bias import BiasCorrection
from ageatlas.cohort import table as cohort_lib
from ageatlas.core import batches
from ageatlas.synthetic.participants import make_cohort

REPO = Path(__file__).resolve().parents[2]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
SPLIT = {"train": 0.5, "val": 0.25, "test": 0.25}
BATCH_SIZE = 8  # participants per batch job: several batches even in these small cohorts

pytestmark = pytest.mark.workflow


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """The snakemake CLI on ``workdir/config.yaml``; targets go first in ``args`` (before any -R
    list)."""
    cmd = [
        SNAKEMAKE,
        *args,
        "--snakefile",
        str(REPO / "Snakefile"),
        "--configfile",
        str(workdir / "config.yaml"),
        "--directory",
        str(workdir),
        "--cores",
        "1",
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def write_config(workdir: Path, n_participants: int, **sections) -> dict:
    """A small SYNTHETIC run's config; ``sections`` replace or add top-level sections."""
    config = {
        "results_dir": str(workdir / "results"),
        "logs_dir": str(workdir / "logs"),
        "benchmarks_dir": str(workdir / "bench"),
        "seed": 3,
        "cohort": {"source": "synthetic"},
        "synthetic": {"n_participants": n_participants, "scale": 0.2},
        "split": {"sizes": SPLIT},
        "atlas": {"n_members": 2, "iterations": 1},
        "batch": {"size": BATCH_SIZE, "threads": 1},
    } | sections
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return config


def missing_outputs(workdir: Path) -> list[Path]:
    result = snakemake(workdir, "--summary")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split("\t") for line in result.stdout.splitlines() if line.count("\t") == 5]
    return [Path(row[0]) for row in rows[1:] if row[4] == "missing"]


def fake_finished_run(workdir: Path, config: dict) -> pd.DataFrame:
    """Create every output of the DAG (round by round: checkpoints reveal more) with one mtime."""
    results = Path(config["results_dir"])
    cohort_path = results / "cohort" / "cohort.tsv"
    people = make_cohort(config["synthetic"]["n_participants"], seed=config["seed"])
    frame = pd.DataFrame([{"eid": p.eid, "sex": p.sex, "age": p.age, "bmi": p.bmi} for p in people])
    for _ in range(6):
        missing = missing_outputs(workdir)
        if not missing:
            return cohort_lib.read_participant_tsv(cohort_path)
        for path in missing:
            if path == cohort_path:
                path.parent.mkdir(parents=True, exist_ok=True)
                sizes = config["split"]["sizes"]
                cohort_lib.cohort_table(frame, sizes, config["seed"]).to_csv(
                    path, sep="\t", index=False
                )
            elif "." not in path.name:  # directory outputs: stitched/{eid}, synthetic/truth
                path.mkdir(parents=True, exist_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
        # One time for all: no output is older than its inputs, so the
        # checkpoints count as done and the DAG after them unfolds.
        stamp = time.time() - 60
        for root, dirs, files in os.walk(results):
            for name in dirs + files:
                os.utime(os.path.join(root, name), (stamp, stamp))
    raise AssertionError("the DAG kept growing: outputs still missing after 6 rounds")


JOB_LINE = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$")


def planned_jobs(result: subprocess.CompletedProcess) -> list[tuple[str, dict]]:
    """(rule, wildcards) of every job in a dry run's plan."""
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    jobs: list[tuple[str, dict]] = []
    for line in (result.stdout + "\n" + result.stderr).splitlines():
        match = JOB_LINE.match(line)
        if match:
            jobs.append((match.group(1), {}))
        elif jobs and line.strip().startswith("wildcards: "):
            pairs = line.strip()[len("wildcards: ") :].split(", ")
            jobs[-1][1].update(pair.split("=", 1) for pair in pairs)
    return jobs


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A run of 48 SYNTHETIC participants that looks finished: 2 test participants per group."""
    workdir = tmp_path_factory.mktemp("finished_plan")
    config = write_config(workdir, 48)
    table = fake_finished_run(workdir, config)
    test = table[table["split"] == "test"]
    assert test.groupby("group").size().min() >= 2 and test["group"].nunique() == 6
    return workdir, config, table


def planned_inputs(result: subprocess.CompletedProcess) -> list[tuple[str, list[str]]]:
    """(rule, input files) of every job in a dry run's plan."""
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    jobs: list[tuple[str, list[str]]] = []
    for line in (result.stdout + "\n" + result.stderr).splitlines():
        match = JOB_LINE.match(line)
        if match:
            jobs.append((match.group(1), []))
        elif jobs and line.strip().startswith("input: "):
            jobs[-1][1].extend(line.strip()[len("input: ") :].split(", "))
    return jobs


def test_dag_rulegraph_and_summary_work_before_anything_ran(tmp_path):
    write_config(tmp_path, 12)
    for flag in ("--dag", "--rulegraph"):
        result = snakemake(tmp_path, flag)
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.lstrip().startswith("digraph"), result.stdout[:300]
        assert "stitch" in result.stdout and "qc_table" in result.stdout
    result = snakemake(tmp_path, "--summary")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[0].split("\t")[:3] == ["output_file", "date", "rule"]
    plan = planned_jobs(snakemake(tmp_path, "-n"))
    # 12 participants in batches of about 8: two stitch jobs, dealt by eid.
    eids = [str(p.eid) for p in make_cohort(12, seed=3)]
    expected = batches.plan(eids, batches.batch_count(12, BATCH_SIZE))
    assert sorted(w["batch"] for rule, w in plan if rule == "stitch") == sorted(expected)
    assert len(expected) == 2
    assert not (tmp_path / "results").exists()  # nothing was computed


def test_batch_size_one_is_one_job_per_participant(tmp_path):
    write_config(tmp_path, 6, batch={"size": 1})
    plan = planned_jobs(snakemake(tmp_path, "-n"))
    eids = [str(p.eid) for p in make_cohort(6, seed=3)]
    assert sorted(w["batch"] for rule, w in plan if rule == "stitch") == sorted(eids)


def test_finished_run_plans_nothing(finished):
    workdir, _, _ = finished
    result = snakemake(workdir, "-n")
    assert result.returncode == 0 and "Nothing to be done" in result.stdout + result.stderr, (
        result.stderr[-2000:]
    )


def test_rerunning_one_group_schedules_only_that_groups_jobs(finished):
    """The group target, with its Grad-CAM, atlas and registration forced: exactly that group's
    jobs."""
    workdir, config, table = finished
    group = "F_overweight"
    target = f"{config['results_dir']}/explain/{group}/figures/importance_by_age_band.png"
    jobs = planned_jobs(
        snakemake(workdir, target, "-n", "--forcerun", "gradcam", "atlas_init", "register")
    )
    test_eids = set(
        table.loc[(table["split"] == "test") & (table["group"] == group), "eid"].astype(str)
    )
    for rule, wildcards in jobs:
        assert wildcards.get("group", group) == group, (rule, wildcards)
    by_rule = {}
    for rule, wildcards in jobs:
        by_rule.setdefault(rule, []).append(wildcards)
    # Grad-CAM batches are the cohort's (eid mod the cohort's count): only those holding this
    # group's test participants. Registration and warp batches are the group's own.
    count = batches.batch_count(len(table), BATCH_SIZE)
    assert count > 1
    assert {w["batch"] for w in by_rule["gradcam"]} == {
        batches.batch_name(eid, count) for eid in test_eids
    }
    own = batches.plan(sorted(test_eids), batches.batch_count(len(test_eids), BATCH_SIZE))
    assert sorted(w["batch"] for w in by_rule["register"]) == sorted(own)
    assert sorted(w["batch"] for w in by_rule["warp_gradcam"]) == sorted(own)
    assert sorted(w["subset"] for w in by_rule["population_map"]) == sorted(
        [
            "all",
            "age_band-lt60",
            "age_band-60to70",
            "age_band-ge70",
            "ageing_class-accelerated",
            "ageing_class-aligned",
            "ageing_class-decelerated",
        ]
    )
    assert len(by_rule["class_test"]) == len(by_rule["group_figures"]) == len(by_rule["atlas"]) == 1
    # Shared upstream work is done and stays done; nothing across groups is in this DAG.
    assert not set(by_rule) & {
        "stitch",
        "preprocess",
        "train_age_model",
        "predict_age",
        "cohort_table",
        "registration_qc",
        "importance_figure",
        "truth_summary",
        "all",
    }


def test_forcerun_of_one_groups_registration_leaves_other_groups_untouched(finished):
    """The whole workflow's plan after forcing one group's registrations: no job of another
    group."""
    workdir, config, table = finished
    group = "M_healthy"
    test_eids = sorted(
        table.loc[(table["split"] == "test") & (table["group"] == group), "eid"].astype(str)
    )
    own = batches.plan(test_eids, batches.batch_count(len(test_eids), BATCH_SIZE))
    manifests = [
        f"{config['results_dir']}/explain/{group}/batches/register/{name}.tsv" for name in own
    ]
    jobs = planned_jobs(snakemake(workdir, "all", "-n", "--forcerun", *manifests))
    for rule, wildcards in jobs:
        assert wildcards.get("group", group) == group, (rule, wildcards)
    rules = [rule for rule, _ in jobs]
    assert sorted(w["batch"] for r, w in jobs if r == "register") == sorted(own)
    assert rules.count("population_map") == 7 and rules.count("group_figures") == 1
    # Besides the group's own jobs, only the tables and figures that gather all groups rerun.
    gathering = {
        "registration_qc",
        "importance_figure",
        "examples_figure",
        "truth_summary",
        "participant_failures",
        "all",
    }
    assert {r for r, w in jobs if "group" not in w} <= gathering
    assert "gradcam" not in rules and "atlas_register" not in rules


@pytest.mark.parametrize("subset", ["age_band-ge70", "ageing_class-accelerated"])
def test_one_age_band_or_ageing_class_of_a_group(finished, subset):
    workdir, config, _ = finished
    target = f"{config['results_dir']}/explain/F_obese/maps/{subset}_mean.nii.gz"
    jobs = planned_jobs(snakemake(workdir, target, "-n", "--forcerun", "population_map"))
    assert jobs == [("population_map", {"group": "F_obese", "subset": subset})]


# ---- a trained model given in the config (model.checkpoint) ------------------


def write_given_model_config(workdir: Path, n_participants: int, sizes: dict) -> dict:
    """A run with a model trained elsewhere: its checkpoint (only the job that installs it reads
    the content) and its bias coefficients, older than anything the run writes."""
    elsewhere = workdir / "trained_elsewhere"
    elsewhere.mkdir()
    (elsewhere / "checkpoint.pt").write_bytes(b"weights")
    BiasCorrection("delta", -0.4, 22.0, 50, 0.8).to_json(elsewhere / "bias_correction.json")
    for path in elsewhere.iterdir():
        os.utime(path, (time.time() - 3600,) * 2)
    return write_config(
        workdir,
        n_participants,
        split={"sizes": sizes},
        model={"checkpoint": str(elsewhere / "checkpoint.pt")},
        bias={"coefficients": str(elsewhere / "bias_correction.json")},
        atlas={"n_members": 2, "iterations": 1, "splits": ["test"]},
    )


def test_a_given_model_replaces_training_for_a_cohort_that_is_all_test(tmp_path):
    config = write_given_model_config(tmp_path, 12, {"train": 0, "val": 0, "test": 1})
    jobs = planned_inputs(snakemake(tmp_path, "-n"))
    inputs = dict(jobs)
    installed = f"{config['results_dir']}/age/model/checkpoint.pt"
    assert "train_age_model" not in inputs
    assert inputs["given_checkpoint"] == [config["model"]["checkpoint"]]
    assert installed in inputs["predict_age"]
    assert config["bias"]["coefficients"] in inputs["correct_bias"]
    # The 2.5D baseline is trained too: off with a given model.
    assert not {"projection", "train_baseline", "predict_baseline"} & set(inputs)


def test_a_given_model_needs_no_training_caches_and_explains_with_it(tmp_path):
    """Past the cohort checkpoint: caches of the val and test participants only, no training,
    no baseline, and every Grad-CAM job reads the installed checkpoint."""
    config = write_given_model_config(tmp_path, 24, SPLIT)
    table = fake_finished_run(tmp_path, config)
    jobs = planned_inputs(
        snakemake(tmp_path, "all", "-n", "--forcerun", "given_checkpoint", "preprocess")
    )
    rules = {rule for rule, _ in jobs}
    assert not rules & {"train_age_model", "reference_volume", "train_baseline", "projection"}
    # Preprocess batches: those that hold val or test participants (batches are dealt by eid
    # over the whole cohort, so a batch of only training participants is not planned).
    count = batches.batch_count(len(table), BATCH_SIZE)
    evaluated = table.loc[table["split"].isin(["val", "test"]), "eid"].astype(str)
    only_train = {batches.batch_name(e, count) for e in table["eid"]} - {
        batches.batch_name(e, count) for e in evaluated
    }
    planned = [
        w
        for rule, w in planned_jobs(
            snakemake(tmp_path, "all", "-n", "--forcerun", "given_checkpoint", "preprocess")
        )
        if rule == "preprocess"
    ]
    assert {w["batch"] for w in planned} == {batches.batch_name(e, count) for e in evaluated}
    assert not {w["batch"] for w in planned} & only_train
    installed = f"{config['results_dir']}/age/model/checkpoint.pt"
    cams = [files for rule, files in jobs if rule == "gradcam"]
    test = table.loc[table["split"] == "test", "eid"].astype(str)
    assert len(cams) == len({batches.batch_name(e, count) for e in test})
    assert cams and all(installed in f for f in cams)


def test_a_missing_given_checkpoint_is_named_before_anything_runs(tmp_path):
    config = write_given_model_config(tmp_path, 6, SPLIT)
    Path(config["model"]["checkpoint"]).unlink()
    result = snakemake(tmp_path, "-n")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"model.checkpoint: {config['model']['checkpoint']} does not exist" in output
    assert not (tmp_path / "results").exists()


def test_maps_against_the_group_atlas_wait_for_their_members_registrations(tmp_path):
    """gradcam.reference group_atlas: a gradcam batch reads, for each group among its members,
    that group's atlas and the registration batches that hold its members; no mean volume."""
    config = write_config(
        tmp_path, 48, gradcam={"method": "integrated_gradients", "reference": "group_atlas"}
    )
    table = fake_finished_run(tmp_path, config)
    jobs = planned_inputs(snakemake(tmp_path, "all", "-n", "--forcerun", "gradcam"))
    assert "reference_volume" not in {rule for rule, _ in jobs}
    results = config["results_dir"]
    count = batches.batch_count(len(table), BATCH_SIZE)
    test = table[table["split"] == "test"].astype({"eid": str})
    gradcam_jobs = [files for rule, files in jobs if rule == "gradcam"]
    assert len(gradcam_jobs) == len({batches.batch_name(e, count) for e in test["eid"]})
    for files in gradcam_jobs:
        manifest = next(f for f in files if "/batches/preprocess/" in f)
        name = Path(manifest).stem
        groups = set(test.loc[[batches.batch_name(e, count) == name for e in test["eid"]], "group"])
        registered = {
            Path(f).parts[-4] for f in files if "/batches/register/" in f and Path(f).exists()
        }
        atlases = {Path(f).name[: -len(".nii.gz")] for f in files if "/explain/atlas/" in f}
        assert registered == groups == atlases, (name, files)
        assert all(f.startswith(results) for f in files if "/register/" in f)
