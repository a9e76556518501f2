"""The project's SLURM profile on a real one-node SLURM cluster: its mechanics.

Every workflow here goes through ``snakemake --executor slurm`` with the
profile under test (profiles/slurm installed by ``ageatlas install-profile``,
or AGEATLAS_SLURM_PROFILE: a profile directory or YAML file), where only
partition, account, max-threads, the first status check (2 s) and the keeping
of SLURM logs are changed, plus what a test names. The workflow is a tiny one
written to tmp: per-item rules, a GPU rule, a threaded rule and an aggregation
(the real workflow: test_slurm_workflow.py).

The strict xfail tests document bugs of snakemake-executor-plugin-slurm 2.8.0
that decide the profile's settings (no array jobs, squeue status checks); when
a plugin upgrade fixes one, its test passes, fails as XPASS, and says which
setting to revisit.

Run:  pytest tests/slurm           (root; starts the cluster, see cluster.sh)
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from slurm_harness import (
    PROJECT_PROFILE,
    REPO,
    RunningWorkflow,
    SlurmRun,
    make_test_profile,
    profile_config,
    run_on_slurm,
)

pytestmark = pytest.mark.slurm

PROFILE = (
    Path(REPO, os.environ["AGEATLAS_SLURM_PROFILE"])
    if os.environ.get("AGEATLAS_SLURM_PROFILE")
    else PROJECT_PROFILE
)
STATUS_COMMAND = profile_config(PROFILE).get("slurm-status-command", "sacct")

TAG = "job=$SLURM_JOB_ID array=${{SLURM_ARRAY_JOB_ID:-}}_${{SLURM_ARRAY_TASK_ID:-}}"
SNAKEFILE = f"""
ITEMS = [f"s{{i}}" for i in range(1, int(config.get("items", 4)) + 1)]

rule all:
    input: "results/summary.txt", "results/gpu.txt"

rule made:
    input: expand("results/make/{{item}}.txt", item=ITEMS)

rule make:
    output: "results/make/{{item}}.txt"
    resources: runtime=5, mem_mb=200
    shell: "sleep {{config[sleep]}}; echo {{wildcards.item}} {TAG} > {{output}}"

rule square:
    input: "results/make/{{item}}.txt"
    output: "results/square/{{item}}.txt"
    resources: runtime=5, mem_mb=200
    shell: "(cat {{input}}; echo squared {{wildcards.item}} {TAG}) > {{output}}"

rule gpu:
    output: "results/gpu.txt"
    resources: gpu=1, runtime=5, mem_mb=200
    shell:
        "sleep {{config[sleep]}}; "
        "(env | grep -E "
        "'^(CUDA_VISIBLE_DEVICES|SLURM_STEP_GPUS|SLURM_JOB_GPUS|SLURM_GPUS)=' | sort; "
        "scontrol -d show job $SLURM_JOB_ID) > {{output}}"

rule threaded:
    output: "results/threads.txt"
    threads: 2
    resources: runtime=5, mem_mb=200
    shell:
        "echo threads={{threads}} cpus_per_task=${{{{SLURM_CPUS_PER_TASK:-}}}} "
        "cpus_on_node=$SLURM_CPUS_ON_NODE > {{output}}"

rule aggregate:
    input: expand("results/square/{{item}}.txt", item=ITEMS)
    output: "results/summary.txt"
    shell: "cat {{input}} > {{output}}"
"""


def write_snakefile(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "Snakefile"
    path.write_text(SNAKEFILE)
    return path


def summary_is_correct(workdir: Path, n: int) -> None:
    lines = (workdir / "results" / "summary.txt").read_text().splitlines()
    assert len(lines) == 2 * n, lines
    for i in range(1, n + 1):
        made, squared = lines[2 * i - 2], lines[2 * i - 1]
        assert made.startswith(f"s{i} job="), lines
        assert squared.startswith(f"squared s{i} job="), lines


def tags(folder: Path) -> dict[str, dict[str, str]]:
    """item -> {job, array} as the job wrote them into its output."""
    out = {}
    for f in sorted(folder.glob("*.txt")):
        last = f.read_text().splitlines()[-1]
        out[f.stem] = dict(re.findall(r"(job|array)=(\S*)", last))
    return out


def status_checks_listing(log: str, jobid: str) -> int:
    """How many of the executor's status checks still held ``jobid`` as active."""
    return sum(
        1
        for line in log.splitlines()
        if line.startswith("Checking ")
        and "active jobs with external IDs" in line
        and f"'{jobid}'" in line
    )


def sacct_state(jobid: str) -> str:
    out = subprocess.run(
        ["sacct", "-X", "-P", "-n", "-j", jobid, "-o", "State"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.split("\n")
    return out[0].strip() if out else ""


# ------------------------------------------------------------------ the cluster


def test_cluster_has_an_idle_node_a_gpu_and_accounting(slurm_cluster):
    state, gres = subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%T %G"], capture_output=True, text=True, timeout=30
    ).stdout.split()[:2]
    assert state in ("idle", "mixed", "allocated"), state
    assert gres.startswith("gpu:1"), gres
    config = subprocess.run(
        ["scontrol", "show", "config"], capture_output=True, text=True, timeout=30
    ).stdout
    assert re.search(r"SelectType\s+= select/cons_tres", config)
    assert re.search(r"AccountingStorageType\s+= accounting_storage/slurmdbd", config)
    assocs = subprocess.run(
        [
            "sacctmgr",
            "-n",
            "-P",
            "list",
            "assoc",
            f"account={slurm_cluster.account}",
            "format=user",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.split()
    assert "root" in assocs or os.environ.get("USER", "") in assocs, assocs


# ------------------------------------------------------------------ a clean run


ITEMS = 4


@pytest.fixture(scope="module")
def clean_run(slurm_cluster, tmp_path_factory) -> SlurmRun:
    tmp = tmp_path_factory.mktemp("clean_run")
    profile = make_test_profile(tmp / "profile", slurm_cluster, PROFILE)
    return run_on_slurm(
        tmp / "work",
        write_snakefile(tmp),
        profile,
        "--config",
        f"items={ITEMS}",
        "sleep=1",
        timeout=480,
    )


def test_workflow_completes_with_one_slurm_job_per_item(clean_run):
    run = clean_run
    assert run.returncode == 0, run.tail()
    summary_is_correct(run.workdir, ITEMS)
    made = tags(run.workdir / "results" / "make")
    assert sorted(made) == [f"s{i}" for i in range(1, ITEMS + 1)]
    assert len({t["job"] for t in made.values()}) == ITEMS  # every item its own SLURM job
    assert "Submitted array job" not in run.log
    # SLURM ran (and accounted) every job: make x n, square x n, gpu, aggregate
    jobs = run.jobs()
    assert all(j["State"] == "COMPLETED" for j in jobs), jobs
    assert len(jobs) == 2 * ITEMS + 2, jobs


def test_gpu_rule_gets_a_gpu_allocation(clean_run):
    run = clean_run
    assert run.returncode == 0, run.tail()
    record = (run.workdir / "results" / "gpu.txt").read_text()
    assert "CUDA_VISIBLE_DEVICES=0" in record, record
    assert "GRES=gpu:1(IDX:0)" in record, record  # scontrol -d show job
    assert re.search(r"sbatch .*--comment rule_gpu .*--gpus=1", run.log)
    gpu_jobs = [j for j in run.jobs() if j["Comment"].strip() == "rule_gpu"]
    assert len(gpu_jobs) == 1 and "gres/gpu=1" in gpu_jobs[0]["AllocTRES"], gpu_jobs


def test_status_checks_work_without_errors(clean_run):
    run = clean_run
    assert run.returncode == 0, run.tail()
    assert run.status_check_problems() == []
    assert (
        f"command={STATUS_COMMAND}," in run.log
    )  # the plugin's timing lines name the command used
    calls = re.search(
        r"Status query timing summary at shutdown: calls=(\d+), failures=(\d+)", run.log
    )
    assert calls and int(calls.group(1)) > 0 and int(calls.group(2)) == 0, calls


def test_a_rule_gets_as_many_cpus_as_threads(slurm_cluster, tmp_path):
    """threads: 2 must become --cpus-per-task=2 (the node has at least 2 CPUs).

    A `cpus_per_task` in the profile's default-resources is given to every rule
    that does not set its own, and the plugin prefers it to `threads`.
    """
    profile = make_test_profile(tmp_path / "profile", slurm_cluster, PROFILE)
    run = run_on_slurm(
        tmp_path / "work",
        write_snakefile(tmp_path),
        profile,
        "results/threads.txt",
        "--config",
        "sleep=0",
        timeout=240,
    )
    assert run.returncode == 0, run.tail()
    record = (run.workdir / "results" / "threads.txt").read_text()
    assert "threads=2" in record
    assert "cpus_per_task=2" in record, (
        f"{record.strip()}: a 2-thread rule got fewer CPUs from SLURM; "
        "drop cpus_per_task from the profile's default-resources"
    )


# ------------------------------------------------------------------ faults and floods
# (a scancel'ed job of the real workflow, retried: test_slurm_workflow.py)


def cancel_gpu_job_and_watch(running: RunningWorkflow) -> None:
    """scancel the running `gpu` job; stop the run if the executor never notices.

    The executor has noticed when it restarts the job. If instead a status
    check issued after SLURM recorded the cancellation still holds the job as
    active, it will hold it forever: stop the run (the test then fails).
    """
    job = running.wait_for_job(
        lambda j: j.comment == "rule_gpu" and j.state == "RUNNING", timeout=240
    )
    subprocess.run(["scancel", job.jobid], check=True, timeout=30)
    running.notes.append(f"cancelled {job.jobid}")
    end = time.monotonic() + 90
    while not sacct_state(job.jobid).startswith("CANCELLED"):
        assert time.monotonic() < end, f"sacct never showed job {job.jobid} CANCELLED"
        time.sleep(0.5)
    # A status query issued from now on sees the cancellation (queries take well under 5 s).
    time.sleep(5)
    seen_before = status_checks_listing(running.log, job.jobid)
    end = time.monotonic() + 150
    while running.running() and time.monotonic() < end:
        log = running.log
        if "Trying to restart job" in log:
            return  # detected and resubmitted: let the run finish
        if status_checks_listing(log, job.jobid) > seen_before:
            running.stop(
                f"job {job.jobid} is '{sacct_state(job.jobid)}' in sacct, yet a later status "
                "check of the executor still holds it as running"
            )
            return
        time.sleep(1)


def watch_for_deadlock(running: RunningWorkflow) -> None:
    """Stop a run whose jobs were held back for an array that is never submitted.

    Deadlocked: "Array job collection incomplete" was logged, the executor's
    last 3 status loops had no active job, and nothing of the run is queued.
    Also records the most jobs of the run ever queued at once.
    """
    most = 0
    while running.running() and time.monotonic() < running.deadline - 30:
        most = max(most, len(running.jobs()))
        running.notes[:] = [n for n in running.notes if not n.startswith("most queued")] + [
            f"most queued {most}"
        ]
        log = running.log
        if "Array job collection incomplete" in log:
            loops = [
                line
                for line in log.splitlines()
                if line.startswith(("No active jobs", "Checking the status of"))
            ][-3:]
            if (
                len(loops) == 3
                and all(line.startswith("No active jobs") for line in loops)
                and not running.jobs()
            ):
                running.stop(
                    "jobs were held back for an array job that was never submitted: "
                    "nothing queued, the executor has no active job, snakemake waits"
                )
                return
        time.sleep(0.5)


def most_queued(run: SlurmRun) -> int:
    return max([int(n.split()[-1]) for n in run.notes if n.startswith("most queued")] or [0])


def test_more_ready_jobs_than_the_jobs_limit_all_run_and_the_limit_holds(slurm_cluster, tmp_path):
    """A cohort's stitch batches can outnumber the profile's `jobs` (200): all run, never more than
    `jobs` queued.

    Scaled down: 6 ready per-item jobs, jobs: 2.
    """
    profile = make_test_profile(tmp_path / "profile", slurm_cluster, PROFILE, jobs=2)
    run = run_on_slurm(
        tmp_path / "work",
        write_snakefile(tmp_path),
        profile,
        "made",
        "--config",
        "items=6",
        "sleep=2",
        timeout=300,
        during=watch_for_deadlock,
    )
    made = sorted(p.name for p in (run.workdir / "results" / "make").glob("*.txt"))
    assert not run.stopped, f"{run.notes}; made only {made}"
    assert run.returncode == 0, run.tail()
    assert made == [f"s{i}.txt" for i in range(1, 7)]
    assert 1 <= most_queued(run) <= 2, run.notes
    assert len(run.jobs()) == 6


# ------------------------------------------------------------------ why not arrays, why not sacct


@pytest.mark.xfail(
    strict=True,
    reason=(
        "snakemake-executor-plugin-slurm 2.8.0, issue #473: with slurm-array-jobs, ready jobs of a "
        "rule that arrive in a batch smaller than both the array limit and the rule's other ready "
        "jobs are held back ('Array job collection incomplete ... waiting for more jobs'), never "
        "submitted, and keep their `jobs` slots: the run deadlocks once a rule has more ready jobs "
        "than `jobs`. Hence no arrays in the profile."
    ),
)
def test_array_jobs_deadlock_past_the_jobs_limit(slurm_cluster, tmp_path):
    profile = make_test_profile(
        tmp_path / "profile", slurm_cluster, PROFILE, jobs=2, slurm_array_jobs="make"
    )
    run = run_on_slurm(
        tmp_path / "work",
        write_snakefile(tmp_path),
        profile,
        "made",
        "--config",
        "items=5",
        "sleep=0",
        timeout=300,
        during=watch_for_deadlock,
    )
    made = sorted(p.name for p in (run.workdir / "results" / "make").glob("*.txt"))
    assert not run.stopped, f"{run.notes}; made only {made}"
    assert run.returncode == 0, run.tail()
    assert made == [f"s{i}.txt" for i in range(1, 6)]


@pytest.mark.xfail(
    strict=True,
    reason=(
        "snakemake-executor-plugin-slurm 2.8.0: sacct reports a scancel'ed job as 'CANCELLED by "
        "<uid>', the plugin matches 'CANCELLED' exactly, so under slurm-status-command sacct (the "
        "plugin's default) it never sees the failure and snakemake waits forever instead of "
        "retrying. Hence slurm-status-command: squeue."
    ),
)
def test_sacct_status_notices_a_cancelled_job(slurm_cluster, tmp_path):
    profile = make_test_profile(
        tmp_path / "profile", slurm_cluster, PROFILE, slurm_status_command="sacct"
    )
    run = run_on_slurm(
        tmp_path / "work",
        write_snakefile(tmp_path),
        profile,
        "results/gpu.txt",
        "--config",
        "sleep=3",
        timeout=300,
        during=cancel_gpu_job_and_watch,
    )
    assert not run.stopped, run.notes
    assert run.returncode == 0, run.tail()


@pytest.fixture(scope="module")
def array_run(slurm_cluster, tmp_path_factory) -> SlurmRun:
    """Arrays where they work: every per-item job ready at once, fewer than `jobs`."""
    tmp = tmp_path_factory.mktemp("array_run")
    # The profile's 2 submissions a second hand a rule's 4 ready jobs over in two passes,
    # and the plugin holds an incomplete array back for good (#473 again): arrays here get
    # the plugin's default rate, so that this test is about status tracking only.
    profile = make_test_profile(
        tmp / "profile",
        slurm_cluster,
        PROFILE,
        slurm_array_jobs="make,square",
        max_jobs_per_timespan="100/1s",
    )
    return run_on_slurm(
        tmp / "work",
        write_snakefile(tmp),
        profile,
        "--config",
        f"items={ITEMS}",
        "sleep=1",
        timeout=480,
    )


def test_array_tasks_are_each_tracked_with_squeue(array_run):
    """With squeue status checks every array task is tracked as itself (the #473 deadlock aside)."""
    run = array_run
    assert run.returncode == 0, run.tail()
    summary_is_correct(run.workdir, ITEMS)
    made = tags(run.workdir / "results" / "make")
    array_ids = {t["array"].split("_")[0] for t in made.values()}
    task_ids = sorted(int(t["array"].split("_")[1]) for t in made.values())
    assert len(array_ids) == 1 and "" not in array_ids, made
    assert task_ids == list(range(1, ITEMS + 1)), made
    assert "Submitted array job" in run.log
    jobs = run.jobs()
    array_id = array_ids.pop()
    tasks = [j for j in jobs if j["JobID"].startswith(f"{array_id}_")]
    assert sorted(j["JobID"] for j in tasks) == sorted(
        f"{array_id}_{i}" for i in range(1, ITEMS + 1)
    ), jobs
    assert all(j["State"] == "COMPLETED" for j in jobs), jobs
    assert run.status_check_problems() == []


@pytest.mark.xfail(
    strict=True,
    reason=(
        "snakemake-executor-plugin-slurm 2.8.0 queries sacct for JobIdRaw, so array task <A>_<i> "
        "is looked up under the parent id <A>, the record of one task: every task takes that "
        "task's state (a task still running is reported done, one failure fails all). Hence "
        "slurm-status-command: squeue."
    ),
)
def test_sacct_status_of_each_array_task_is_its_own(array_run):
    import asyncio
    import logging

    from snakemake_executor_plugin_slurm import _status_lookup_ids
    from snakemake_executor_plugin_slurm.job_status_query import (
        query_job_status,
        query_job_status_sacct,
    )

    run = array_run
    assert run.returncode == 0, run.tail()
    status, _ = asyncio.run(
        query_job_status(query_job_status_sacct(run.run_id), logging.getLogger())
    )
    for job in run.jobs():
        if "_" in job["JobID"]:  # an array task, tracked by the executor as <A>_<i>
            found = next(c for c in _status_lookup_ids(job["JobID"]) if c in status)
            assert found in (job["JobID"], job["JobIDRaw"]), (job, found)
