"""The real workflow through the real profile on the real one-node SLURM cluster.

A cut-down demo (12 SYNTHETIC participants at 1/5 of the matrix, one of them
with a truncated zip, in batches of about 4; 2 epochs, tiny atlases and
registrations; GPU rules included: training, prediction, Grad-CAM and both
registration rules ask for the cluster's one GPU) runs twice from the same
config file and targets: once on this machine (``--cores 2``) and once
through ``profiles/slurm`` as installed by ``ageatlas install-profile``.
While the SLURM run goes, a stitch batch job is cancelled with ``scancel``
once it has finished its first participant; the profile's retries must
finish the run, the retry must reuse what the killed attempt finished, and
the results must equal the local run's.

The targets (TARGETS) stop short of the per-subset maps, statistics, figures
and the 2.5D baseline, which add only more CPU jobs of kinds already here
(the whole pipeline runs locally in tests/test_workflow.py): every job costs
~15 s on this 2-core node, mostly two Snakemake start-ups (the plugin's job
step, then srun), and CI must stay within ~15 minutes.

Test-cluster changes to the profile (slurm_harness.make_test_profile): the
test partition and account, memory requests divided by 8 (the rules ask up to
32 GB, the node has ~24 GB), max-threads 2 (the node's CPUs), the first status
check after 2 s, successful jobs' SLURM logs kept.

Run:  pytest tests/slurm           (root; starts the cluster, see cluster.sh)
"""

from __future__ import annotations

import filecmp
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from slurm_harness import SNAKEMAKE, RunningWorkflow, make_test_profile, run_on_slurm, snapshot_code

from ageatlas.core import batches
from ageatlas.synthetic.participants import make_cohort

pytestmark = pytest.mark.slurm

EIDS = [str(p.eid) for p in make_cohort(12, seed=3)]

GRID = {"shape": [45, 35, 74], "spacing": [11.16, 11.16, 15.0]}
RESULTS = "results/cut"  # relative: both runs write the same paths into their tables
MEM_DIVISOR = 8
# predictions (train, predict, bias), Grad-CAM + atlases + registration + warp +
# the "all" population maps of every group, the registration QC table
TARGETS = ["correct_bias", "importance_figure", "registration_qc", "participant_failures"]
GPU_RULES = {"train_age_model", "predict_age", "gradcam", "atlas_register", "register"}
BATCH_SIZE = 4
BROKEN = 5  # index of the participant whose zip is truncated: a QC row inside its batch
# Rules that run one job per participant without batches.
PER_PARTICIPANT_RULES = {"stitch", "preprocess", "gradcam", "register", "warp_gradcam"}


def cut_config() -> dict:
    """The cut-down demo of tests/test_workflow.py's whole-pipeline test, with every GPU rule on a
    GPU."""
    return {
        "results_dir": RESULTS,
        "logs_dir": "logs/cut",
        "benchmarks_dir": "benchmarks/cut",
        "seed": 3,
        "cohort": {"source": "synthetic"},
        "synthetic": {
            "n_participants": 12,
            "scale": 0.2,
            "defects": {EIDS[BROKEN]: ["truncated_zip"]},
        },
        "stitch": {"grid": GRID},
        # One process per batch job: a batch's participants go one after another, so a
        # cancelled batch has some finished and some not.
        "batch": {"size": BATCH_SIZE, "threads": 1},
        "split": {"sizes": {"train": 0.5, "val": 0.25, "test": 0.25}},
        "preprocess": {"downsample": 2},
        "train": {
            "epochs": 2,
            "lr": 0.0001,
            "batch_size": 2,
            "accumulate": 1,
            "num_workers": 0,
            "gpus": 1,
        },
        "projection": {"size": [64, 64]},
        "baseline": {
            "epochs": 2,
            "batch_size": 2,
            "max_shift": 2,
            "hidden": 32,
            "pool": 2,
            "num_workers": 0,
            "gpus": 1,
        },
        # 3 test participants: atlases from every split so each test group has one
        "atlas": {"n_members": 2, "iterations": 1, "splits": ["train", "val", "test"]},
        "registration": {
            "affine_iterations": 10,
            "levels": 2,
            "finest_level": 1,
            "lncc_kernel": 3,
            "max_steps": 10,
            "gpus": 1,
        },
        "maps": {"n_perm": 19},
        "resources": {
            "mem_scale": 1 / MEM_DIVISOR
        },  # the rules' requests, sized for full-size volumes
    }


class Runs:
    """The two runs of one config: local and SLURM, with what the fault injection did."""

    def __init__(self, root: Path):
        self.root = root
        self.configfile = root / "config.yaml"
        self.local_dir = root / "local"
        self.slurm_dir = root / "slurm"
        self.local = None
        self.local_seconds = None
        self.slurm = None
        self.cancelled = {}

    def results(self, which: str) -> Path:
        return (self.local_dir if which == "local" else self.slurm_dir) / RESULTS


@pytest.fixture(scope="module")
def runs(slurm_cluster, tmp_path_factory) -> Runs:
    runs = Runs(tmp_path_factory.mktemp("workflow"))
    runs.configfile.write_text(yaml.safe_dump(cut_config()))
    # Both runs use one copy of the code: edits of the working tree meanwhile cannot split them.
    snakefile, env = snapshot_code(runs.root / "code")

    # The local reference run goes alongside the SLURM run: the SLURM node often
    # runs one job at a time (one GPU), so the local run mostly uses the idle core.
    runs.local_dir.mkdir()
    local_log = runs.root / "local.log"
    t0 = time.monotonic()
    with open(local_log, "w") as log:
        local = subprocess.Popen(
            [
                SNAKEMAKE,
                "--snakefile",
                str(snakefile),
                "--configfile",
                str(runs.configfile),
                "--directory",
                str(runs.local_dir),
                "--cores",
                "2",
                *TARGETS,
            ],  # targets never after --configfile
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=runs.root,
            env=env,
            start_new_session=True,
        )
    local_seconds = {}

    def time_local():
        local.wait()
        local_seconds["seconds"] = time.monotonic() - t0

    timer = threading.Thread(target=time_local, daemon=True)
    timer.start()
    profile = make_test_profile(runs.root / "profile", slurm_cluster, mem_divisor=MEM_DIVISOR)

    def cancel_a_stitch_batch(running: RunningWorkflow):
        # Wait until a stitch batch runs and has finished one participant (its record is
        # written last), then cancel it as an admin would: some of its participants are
        # done, the others not.
        job = running.wait_for_job(
            lambda j: j.comment.startswith("rule_stitch") and j.state == "RUNNING",
            timeout=running.deadline - time.monotonic() - 60,
            poll=0.1,
        )
        batch = job.comment.split("_wildcards_")[-1]
        members = batches.plan(EIDS, batches.batch_count(len(EIDS), BATCH_SIZE))[batch]
        done = runs.slurm_dir / RESULTS / "ingest" / "batches" / "stitch" / "done"
        end = time.monotonic() + 120
        while time.monotonic() < end and not any(
            (done / f"{eid}.json").exists() for eid in members
        ):
            time.sleep(0.05)
        subprocess.run(["scancel", job.raw_id], check=True, timeout=30)
        finished = sorted(eid for eid in members if (done / f"{eid}.json").exists())
        runs.cancelled.update(jobid=job.raw_id, comment=job.comment, batch=batch)
        runs.cancelled.update(members=members, finished_before=finished)
        running.notes.append(f"cancelled {job.raw_id} ({job.comment}) after {finished}")

    try:
        runs.slurm = run_on_slurm(
            runs.slurm_dir,
            snakefile,
            profile,
            *TARGETS,
            "--configfile",
            str(runs.configfile),
            timeout=1500,
            during=cancel_a_stitch_batch,
            env=env,
        )
        timer.join(timeout=max(60.0, 1200 - (time.monotonic() - t0)))
    finally:
        if local.poll() is None:
            os.killpg(local.pid, signal.SIGKILL)
            local.wait()
    runs.local = subprocess.CompletedProcess(
        local.args, local.returncode, local_log.read_text(), ""
    )
    runs.local_seconds = local_seconds.get("seconds", time.monotonic() - t0)
    assert runs.local.returncode == 0, (
        f"the LOCAL reference run failed:\n{runs.local.stdout[-5000:]}"
    )
    print(
        f"\nlocal run {runs.local_seconds:.0f} s; SLURM run {runs.slurm.seconds:.0f} s, "
        f"its snakemake process (with sbatch/squeue) {runs.slurm.main_cpu_s} CPU s; "
        f"{runs.slurm.notes}"
    )
    return runs


def test_the_workflow_completes_on_slurm_despite_a_cancelled_job(runs):
    run = runs.slurm
    assert not run.timed_out, f"the SLURM run did not finish in time:\n{run.tail()}"
    assert run.returncode == 0, run.tail()
    assert re.search(r"(\d+) of \1 steps \(100%\) done", run.log), run.tail()
    assert run.status_check_problems() == []
    assert "command=squeue," in run.log  # the profile's status command was used


def rule_of(job: dict) -> str:
    return re.match(r"rule_(.+?)(_wildcards_.*)?$", job["Comment"].strip()).group(1)


def test_every_job_ran_on_slurm_and_was_tracked_to_its_end(runs):
    run = runs.slurm
    assert run.returncode == 0, run.tail()
    jobs = run.jobs()
    states = sorted({j["State"].split()[0] for j in jobs})
    assert states == ["CANCELLED", "COMPLETED"], jobs
    # One SLURM job per snakemake job that is not a local rule, plus the cancelled attempt.
    steps = int(re.search(r"(\d+) of \1 steps \(100%\) done", run.log).group(1))
    local = len(re.findall(r"^local(?:rule|checkpoint) \w+:$", run.log, re.MULTILINE))
    assert local >= 3  # QC, cohort and failure tables at least, in the main process
    assert len(jobs) == steps - local + 1, (len(jobs), steps, local)
    assert "Submitted array job" not in run.log  # one sbatch per job (profile: no arrays)


def test_per_participant_work_ran_in_batches(runs):
    """SLURM jobs: one per batch and per cohort-level step, far below one per participant."""
    jobs = [j for j in runs.slurm.jobs() if not j["State"].startswith("CANCELLED")]
    by_rule = {}
    for job in jobs:
        by_rule.setdefault(rule_of(job), []).append(job)
    count = batches.batch_count(len(EIDS), BATCH_SIZE)
    assert len(by_rule["stitch"]) == len(batches.plan(EIDS, count)) == 4
    assert len(by_rule["preprocess"]) <= 4
    cohort = pd.read_csv(runs.results("slurm") / "cohort" / "cohort.tsv", sep="\t", dtype=str)
    test = cohort[cohort["split"] == "test"]
    assert len(by_rule["gradcam"]) == len({batches.batch_name(e, count) for e in test["eid"]})
    assert len(by_rule["register"]) == test["group"].nunique()  # a group's few: one batch
    batch_jobs = sum(len(by_rule.get(rule, [])) for rule in PER_PARTICIPANT_RULES)
    per_participant = len(EIDS) * 2 + len(test) * 3  # stitch, preprocess; the test's three
    assert batch_jobs <= per_participant / 2, (batch_jobs, per_participant)
    # The broken participant is a QC row of its batch; its batch mates went on.
    qc = pd.read_csv(runs.results("slurm") / "cohort" / "participant_qc.tsv", sep="\t", dtype=str)
    qc = qc.set_index("eid")
    assert qc.loc[EIDS[BROKEN], "status"] == "excluded"
    assert (qc.drop(EIDS[BROKEN])["status"] != "excluded").all()
    failures = runs.results("slurm") / "cohort" / "participant_failures.tsv"
    assert len(pd.read_csv(failures, sep="\t")) == 0


def test_gpu_rules_got_the_gpu_and_cpu_rules_did_not(runs):
    jobs = runs.slurm.jobs()
    by_rule = {}
    for job in jobs:
        by_rule.setdefault(rule_of(job), []).append(job)
    assert GPU_RULES <= set(by_rule), sorted(by_rule)
    for rule, rule_jobs in by_rule.items():
        for job in rule_jobs:
            has_gpu = "gres/gpu=1" in job["AllocTRES"] or (
                job["State"].startswith("CANCELLED") and rule in GPU_RULES
            )
            assert has_gpu == (rule in GPU_RULES), (rule, job)
    # The jobs' own logs: a GPU rule saw the fake GPU and fell back to the CPU.
    log = (runs.slurm_dir / "logs" / "cut" / "train_age_model.log").read_text()
    assert "CPU" in log, log[-2000:]


def test_slurm_results_equal_the_local_run(runs):
    assert runs.slurm.returncode == 0, runs.slurm.tail()
    local, slurm = runs.results("local"), runs.results("slurm")
    # The same files ...
    files_local = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file())
    files_slurm = sorted(str(p.relative_to(slurm)) for p in slurm.rglob("*") if p.is_file())
    assert files_slurm == files_local, sorted(set(files_slurm) ^ set(files_local))
    # ... the same cohort, split, QC and predictions, byte for byte: training on
    # the CPU is deterministic for a seed (same code, same torch threads here) ...
    for table in (
        "cohort/cohort.tsv",
        "cohort/participant_qc.tsv",
        "cohort/phenotype_qc.tsv",
        "age/predictions.tsv",
        "age/predictions_corrected.tsv",
    ):
        assert filecmp.cmp(local / table, slurm / table, shallow=False), table
    metrics = [
        pd.read_csv(root / "age" / "model" / "metrics.tsv", sep="\t") for root in (local, slurm)
    ]
    learning = ["epoch", "train_mae", "val_mae", "lr"]  # not seconds, samples_per_s
    pd.testing.assert_frame_equal(metrics[0][learning], metrics[1][learning], check_exact=True)
    # ... the same Grad-CAM maps, exactly ...
    for path in sorted((local / "explain" / "gradcam").glob("*.nii.gz")):
        assert np.array_equal(
            nib.load(path).get_fdata(),
            nib.load(slurm / "explain" / "gradcam" / path.name).get_fdata(),
        ), path
    # ... and registration to float32 rounding. Each run repeats itself bit for
    # bit, but the local and the SLURM run differ at the rounding level from the
    # first deformable registration on (measured with the same code and inputs:
    # SVFFD parameters by 4e-9, atlases and warped maps by at most 9e-6 on [0, 1]
    # values, NCC in the 7th digit; the cause, probably a math library's
    # environment-dependent code path, is not pinned down). SD maps of groups with
    # one member are NaN in both.
    reg = [
        pd.read_csv(root / "explain" / "registration_qc.tsv", sep="\t", dtype={"eid": str})
        for root in (local, slurm)
    ]
    pd.testing.assert_frame_equal(
        reg[0][["eid", "group", "status"]], reg[1][["eid", "group", "status"]]
    )
    ncc = [c for c in reg[0].columns if c.startswith("ncc") or c == "folding_share"]
    pd.testing.assert_frame_equal(reg[0][ncc], reg[1][ncc], check_exact=False, rtol=1e-5, atol=1e-6)
    for pattern in (
        "explain/atlas/*.nii.gz",
        "explain/*/warped/*.nii.gz",
        "explain/*/maps/*.nii.gz",
    ):
        paths = sorted(local.glob(pattern))
        assert paths, pattern
        for path in paths:
            a = nib.load(path).get_fdata()
            b = nib.load(slurm / path.relative_to(local)).get_fdata()
            assert a.shape == b.shape and np.allclose(a, b, rtol=0, atol=1e-4, equal_nan=True), (
                path,
                np.nanmax(np.abs(a - b)),
            )


def test_the_cancelled_batch_was_retried_reusing_what_it_had_finished(runs):
    run = runs.slurm
    assert runs.cancelled, f"no stitch batch was seen running to cancel: {run.notes}\n{run.tail()}"
    assert run.returncode == 0, run.tail()
    jobs = run.jobs()
    cancelled = next(j for j in jobs if j["JobIDRaw"] == runs.cancelled["jobid"])
    assert cancelled["State"].startswith("CANCELLED"), cancelled  # the fault really happened
    assert "Trying to restart job" in run.log
    retried = [
        j
        for j in jobs
        if j["Comment"] == cancelled["Comment"] and j["JobIDRaw"] != cancelled["JobIDRaw"]
    ]
    assert len(retried) == 1 and retried[0]["State"] == "COMPLETED", (cancelled, retried)
    # attempt 2 asks for twice the memory (the batch rule's request, scaled by 1/8 here)
    mem = {
        j["JobIDRaw"]: int(re.match(r"(\d+)M", j["ReqMem"]).group(1))
        for j in (cancelled, retried[0])
    }
    assert mem[retried[0]["JobIDRaw"]] == 2 * mem[cancelled["JobIDRaw"]], (cancelled, retried)
    # The retry reused the participants the killed attempt had finished, and did the rest.
    batch, members = runs.cancelled["batch"], runs.cancelled["members"]
    manifest = runs.results("slurm") / "ingest" / "batches" / "stitch" / f"{batch}.tsv"
    status = pd.read_csv(manifest, sep="\t", dtype=str).set_index("eid")["status"]
    assert sorted(status.index) == sorted(members)
    finished = runs.cancelled["finished_before"]
    assert finished and all(status[eid] == "reused" for eid in finished), (finished, status)
    assert set(status) <= {"reused", "done"}
    # Nothing lost: every member's stitched volumes equal the local run's.
    for eid in members:
        if eid == EIDS[BROKEN]:
            continue
        for contrast in ("W", "F"):
            name = f"ingest/{eid}/{eid}_{contrast}.nii.gz"
            local_image = nib.load(runs.results("local") / name)
            slurm_image = nib.load(runs.results("slurm") / name)
            assert np.array_equal(local_image.get_fdata(), slurm_image.get_fdata()), name
