"""Run Snakemake workflows on the real one-node SLURM cluster of ``cluster.sh``.

Reusable by any test (the project's own workflow included)::

    from slurm_harness import start_cluster, make_test_profile, run_on_slurm

    cluster = start_cluster()                       # or the ``slurm_cluster`` fixture
    profile = make_test_profile(tmp_path / "profile", cluster)   # copy of profiles/slurm
    run = run_on_slurm(tmp_path / "work", REPO / "Snakefile", profile,
                       "--configfile", "config/demo.yaml")
    assert run.returncode == 0, run.tail()
    assert not run.status_check_problems()

``run_on_slurm`` never hangs: past ``timeout`` it stops snakemake, cancels the
run's SLURM jobs (by the run ID that names them all) and returns with
``timed_out=True``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CLUSTER_SH = HERE / "cluster.sh"
PROJECT_PROFILE = (REPO / "profiles" / "slurm").resolve()
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))

# What a test profile changes beyond partition and account: status checks start
# after 2 s instead of 40 s (the plugin then adds 10 s per check in which
# nothing finished, up to 180 s, and falls back to this value whenever a job
# finishes), and successful jobs keep their SLURM logs so tests can read them.
TEST_PROFILE_SETTINGS = {
    "slurm-init-seconds-before-status-checks": 2,
    "slurm-keep-successful-logs": True,
}


class ClusterError(RuntimeError):
    """cluster.sh could not start the cluster; the message holds its output."""


@dataclass
class Cluster:
    account: str
    partition: str
    name: str
    node: str
    cpus: int
    start_seconds: float
    log: str


def _sh(*cmd: str, timeout: float = 30) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True).stdout


def start_cluster(timeout: float = 1800) -> Cluster:
    """``cluster.sh start`` (idempotent: quick when the cluster is already up)."""
    env = os.environ.copy()
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            ["bash", str(CLUSTER_SH), "start"],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        raise ClusterError(
            f"cluster.sh start did not finish in {timeout:.0f}s:\n{out[-6000:]}"
        ) from exc
    took = time.monotonic() - t0
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise ClusterError(f"cluster.sh start failed (exit {proc.returncode}):\n{log[-6000:]}")
    return Cluster(
        account=env.get("AGEATLAS_SLURM_ACCOUNT", "ageatlas"),
        partition=env.get("AGEATLAS_SLURM_PARTITION", "debug"),
        name=env.get("AGEATLAS_SLURM_CLUSTER", "ageatlas"),
        node=_sh("hostname", "-s").strip(),
        cpus=int(_sh("sinfo", "-h", "-N", "-o", "%c").split()[0]),
        start_seconds=took,
        log=log,
    )


def profile_config(source: Path = PROJECT_PROFILE) -> dict:
    """A profile's settings; ``source`` is a profile directory or its YAML file."""
    source = Path(source)
    return yaml.safe_load((source / "config.yaml" if source.is_dir() else source).read_text()) or {}


def make_test_profile(
    dest: Path, cluster: Cluster, source: Path = PROJECT_PROFILE, mem_divisor: int = 1, **overrides
) -> Path:
    """The profile ``source`` (directory or YAML file) made ready for the test cluster.

    The project's profile is installed with ``ageatlas install-profile``
    (partition and account of the test cluster), as a user would; another
    ``source`` gets them added to its default-resources. Then
    TEST_PROFILE_SETTINGS apply, ``max-threads`` is the node's CPUs (a rule's
    ``threads: 8`` would ask more CPUs than the node has), and with
    ``mem_divisor`` > 1 the profile's default memory is divided by it (the
    real workflow's rules ask up to 32 GB and the test node has ~24 GB: the
    workflow's config scales the rules' own requests, resources.mem_scale). ``overrides`` use
    the profile's keys with ``_`` for ``-`` (``slurm_array_jobs="make"``);
    ``None`` removes a key. Returns the profile directory, for ``--profile``.
    """
    from ageatlas.cli import install_profile

    dest = Path(dest)
    source = Path(source)
    if source.resolve() in (PROJECT_PROFILE, PROJECT_PROFILE / "config.yaml"):
        config = yaml.safe_load(
            install_profile(
                cluster.partition, cluster.account, dest, source, force=True
            ).read_text()
        )
    else:
        config = profile_config(source)
        resources = dict(config.get("default-resources") or {})
        resources.setdefault("slurm_partition", cluster.partition)
        resources.setdefault("slurm_account", cluster.account)
        config["default-resources"] = resources
    settings = {**TEST_PROFILE_SETTINGS, "max-threads": cluster.cpus}
    for key, value in {
        **settings,
        **{k.replace("_", "-"): v for k, v in overrides.items()},
    }.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    if mem_divisor > 1:

        def scaled(expression):
            return f"max(100, ({expression}) // {mem_divisor})"

        config["default-resources"]["mem_mb"] = scaled(config["default-resources"]["mem_mb"])
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


# ------------------------------------------------------------------ runs


def snapshot_code(dest: Path) -> tuple[Path, dict]:
    """A copy of the workflow and the package as they are now, and the environment that uses it.

    Two runs that must give the same results (local and SLURM) run this copy,
    so that an edit of the working tree between or during them (a developer at
    work) cannot make them differ. Returns the copy's Snakefile and an
    environment whose PYTHONPATH puts the copy's ``src`` before the editable
    install; SLURM jobs inherit it.
    """
    import shutil

    dest = Path(dest)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".snakemake")
    for name in ("workflow", "src", "envs", "config"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, dest / name, ignore=ignore)
    shutil.copy2(REPO / "Snakefile", dest / "Snakefile")
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join([str(dest / "src"), *filter(None, [env.get("PYTHONPATH")])])
    return dest / "Snakefile", env


@dataclass
class SlurmRun:
    cmd: list[str]
    workdir: Path
    log_path: Path
    returncode: int | None
    seconds: float
    timed_out: bool = False
    notes: list[str] = field(default_factory=list)  # what a during() callback reported
    stopped: bool = False  # a during() callback stopped it
    main_cpu_s: float | None = None  # snakemake's CPU seconds and its sbatch/squeue calls'

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def run_id(self) -> str | None:
        """The plugin's run UUID: the --job-name of every job of this run."""
        m = re.search(r"SLURM run ID: (\S+)", self.log)
        return m.group(1) if m else None

    def tail(self, n: int = 6000) -> str:
        lines = [line[:400] for line in self.log.splitlines()]  # array payloads are huge
        return "\n".join(lines)[-n:]

    def jobs(self) -> list[dict]:
        """Every SLURM job and array task of this run, as sacct records them."""
        return sacct_jobs(self.run_id) if self.run_id else []

    def status_check_problems(self) -> list[str]:
        """Log lines that show the executor's status checks failing or degraded."""
        return status_check_problems(self.log)


def sacct_jobs(run_id: str) -> list[dict]:
    fields = ["JobID", "JobIDRaw", "State", "ExitCode", "Comment", "AllocTRES", "ReqMem", "Elapsed"]
    out = _sh(
        "sacct",
        "-X",
        "-P",
        "-n",
        "--starttime",
        "now-1days",
        "--name",
        run_id,
        "--format",
        ",".join(f"{f}%400" for f in fields),
    )
    return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]


_PROBLEMS = [
    r"SLURM query command failed",
    r"could not check status",
    r"Unable to get the status of all active jobs",
    r"'sacct' unavailable",
    r"Falling back to 'sacct'",
    r"SLURM query command timed out",
    r"Error querying SLURM job status",
    r"Failed to retrieve jobstep reason",
    r"sacct: error",
    r"No SLURM account given",
    r"Unable to guess SLURM account",
]


def status_check_problems(log: str) -> list[str]:
    bad = [line[:300] for line in log.splitlines() if any(re.search(p, line) for p in _PROBLEMS)]
    for m in re.finditer(
        r"Status query timing summary at shutdown: calls=(\d+), failures=(\d+)", log
    ):
        if int(m.group(2)) or not int(m.group(1)):
            bad.append(m.group(0))
    return bad


def run_on_slurm(
    workdir: Path,
    snakefile: Path,
    profile_dir: Path,
    *extra_args: str,
    timeout: float = 600,
    during: Callable[[RunningWorkflow], None] | None = None,
    env: dict | None = None,
) -> SlurmRun:
    """``snakemake --executor slurm`` (from the profile) on ``snakefile`` in ``workdir``.

    Output goes to ``workdir/snakemake-slurm.log`` (with ``--verbose``, so the
    plugin's status checks are logged). ``during``, if given, is called with a
    :class:`RunningWorkflow` once snakemake has started (fault injection); it
    may append to ``running.notes``. ``env``: snakemake's environment, which
    its SLURM jobs inherit (the plugin submits with --export=ALL).
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "snakemake-slurm.log"
    cmd = [  # snakemake runs in workdir: every path absolute
        SNAKEMAKE,
        "--snakefile",
        str(Path(snakefile).resolve()),
        "--directory",
        str(workdir),
        "--profile",
        str(Path(profile_dir).resolve()),
        "--verbose",
        *extra_args,
    ]
    t0 = time.monotonic()
    deadline = t0 + timeout
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True, env=env
        )
        running = RunningWorkflow(proc, workdir, log_path, deadline)
        timed_out = False
        main_cpu_s = None
        try:
            if during is not None:
                during(running)
            main_cpu_s = _wait_for_cpu_seconds(proc, deadline)
        except subprocess.TimeoutExpired:
            timed_out = True
        except BaseException:
            _stop(proc, log_path)
            raise
        if timed_out:
            _stop(proc, log_path)
    return SlurmRun(
        cmd,
        workdir,
        log_path,
        None if timed_out else proc.returncode,
        time.monotonic() - t0,
        timed_out,
        running.notes,
        running.stopped,
        main_cpu_s,
    )


def _wait_for_cpu_seconds(proc: subprocess.Popen, deadline: float) -> float | None:
    """Wait for snakemake to exit; its CPU seconds (user + system) with those of the
    sbatch/squeue/scancel calls it made (its children; the SLURM jobs are not: slurmd
    runs them). The scheduler's cost on a cluster (docs/measurements.md). None when a
    during() callback's poll() collected the process first (its usage is gone then)."""
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            return None
        try:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        except ChildProcessError:  # collected by a poll() in between
            proc.wait()
            return None
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return round(usage.ru_utime + usage.ru_stime, 2)
        time.sleep(0.5)
    raise subprocess.TimeoutExpired(proc.args, deadline)


def _stop(proc: subprocess.Popen, log_path: Path) -> None:
    """Stop snakemake (SIGTERM lets it scancel its jobs), then cancel what is left."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            # A deadlocked snakemake waits forever for jobs it never submitted.
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    m = re.search(r"SLURM run ID: (\S+)", log_path.read_text(errors="replace"))
    if m:
        subprocess.run(["scancel", "--name", m.group(1)], capture_output=True, timeout=60)


@dataclass
class QueuedJob:
    jobid: str  # as SLURM shows it: "42" or, for an array task, "40_3"
    raw_id: str  # the task's own job id ("43")
    array_id: str  # the array's job id ("40"); == raw_id for a plain job
    task: str  # array index, "N/A" for a plain job
    state: str
    comment: str  # the plugin writes rule_<rule>[_wildcards_<...>] here
    workdir: str

    @property
    def is_array_task(self) -> bool:
        return self.task not in ("N/A", "")


class RunningWorkflow:
    """A snakemake process being run by ``run_on_slurm``, for fault injection."""

    def __init__(self, proc, workdir: Path, log_path: Path, deadline: float):
        self.proc = proc
        self.workdir = Path(workdir)
        self.log_path = log_path
        self.deadline = deadline
        self.notes: list[str] = []
        self.stopped = False

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, why: str) -> None:
        """Stop snakemake now (and cancel its jobs); ``why`` goes to the notes."""
        self.notes.append(f"stopped: {why}")
        self.stopped = True
        _stop(self.proc, self.log_path)

    def jobs(self) -> list[QueuedJob]:
        """This run's jobs in squeue (matched by working directory)."""
        out = _sh("squeue", "-h", "-o", "%i|%A|%F|%K|%T|%k|%Z")
        jobs = [QueuedJob(*line.split("|", 6)) for line in out.splitlines() if line.count("|") >= 6]
        return [j for j in jobs if Path(j.workdir) == self.workdir]

    def wait_for_job(
        self, predicate: Callable[[QueuedJob], bool], timeout: float = 180, poll: float = 0.5
    ) -> QueuedJob:
        end = min(self.deadline, time.monotonic() + timeout)
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"snakemake exited ({self.proc.returncode}) before the awaited job appeared"
                )
            for job in self.jobs():
                if predicate(job):
                    return job
            time.sleep(poll)
        raise AssertionError(
            f"no job matching the predicate within {timeout:.0f}s; queue: {self.jobs()}"
        )
