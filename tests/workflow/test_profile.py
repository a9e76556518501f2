"""The SLURM profile (profiles/slurm) against the workflow's rules, without a cluster.

Every rule that runs a job must get memory and runtime from the profile (scaled
with the attempt, never less than the rule declares) or fit the profile's
defaults; GPU rules must ask for a GPU; the settings proven on a real cluster
(tests/slurm) must stay as they are. `ageatlas install-profile` is tested here
too. The real-cluster tests are in tests/slurm (`make test-slurm`).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ageatlas import cli
from ageatlas.core import batches

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "profiles" / "slurm" / "config.yaml"
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))

# Rules that use a GPU when the config gives them one (README, profile comments).
# A rule is checked only if the workflow has it (the 2.5D baseline is added later).
GPU_RULES = {
    "train_age_model",
    "predict_age",
    "gradcam",  # train.gpus
    "atlas_register",
    "register",  # registration.gpus
    "train_baseline",
    "predict_baseline",
    "baseline_gradcam_figure",  # baseline.gpus
}
REGISTRATION_RULES = {"atlas_register", "register"}  # gpu: registration.gpus (0 = CPU)


@pytest.fixture(scope="module")
def profile() -> dict:
    return yaml.safe_load(PROFILE.read_text())


def load_rules(tmp: Path, **overrides) -> dict:
    """name -> snakemake Rule, for config/demo.yaml with top-level sections updated."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import (
        ConfigSettings,
        OutputSettings,
        ResourceSettings,
        StorageSettings,
    )

    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    for section, values in overrides.items():
        config[section] = {**config.get(section, {}), **values}
    tmp.mkdir(parents=True, exist_ok=True)
    configfile = tmp / "config.yaml"
    configfile.write_text(yaml.safe_dump(config))
    with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
        workflow = api.workflow(
            resource_settings=ResourceSettings(),
            config_settings=ConfigSettings(configfiles=[configfile]),
            storage_settings=StorageSettings(),
            snakefile=REPO / "Snakefile",
            workdir=REPO,
        )._workflow
        return {rule.name: rule for rule in workflow.rules}


@pytest.fixture(scope="module")
def gpu_rules(tmp_path_factory) -> dict:
    """The workflow's rules as a GPU cluster config has them (train, registration,
    baseline: gpus 1)."""
    return load_rules(
        tmp_path_factory.mktemp("gpu"),
        train={"gpus": 1},
        registration={"gpus": 1},
        baseline={"gpus": 1},
        gradcam={"method": "hirescam", "shifts": 1},  # the default; the requests file's unit
    )


@pytest.fixture(scope="module")
def cpu_rules(tmp_path_factory) -> dict:
    """The same with no GPU anywhere (gpus 0 everywhere)."""
    return load_rules(
        tmp_path_factory.mktemp("cpu"),
        train={"gpus": 0},
        registration={"gpus": 0},
        baseline={"gpus": 0},
        gradcam={"method": "hirescam", "shifts": 1},
    )


def declared(rule, name):
    """A resource as the rule declares it (None if it does not, or if it is a function)."""
    resource = rule.resources.get(name)
    value = getattr(resource, "value", resource)
    return value if isinstance(value, (int, float, str)) else None


def evaluate(expression, attempt: int, threads: int = 1):
    """A profile resource value as Snakemake evaluates it (a number or a Python expression)."""
    if isinstance(expression, (int, float)):
        return expression
    return eval(str(expression), {"attempt": attempt, "threads": threads})


def job_rules(rules: dict) -> dict:
    """Rules that submit a job (not `all`-like target rules without an action)."""
    return {name: rule for name, rule in rules.items() if not rule.norun}


# ------------------------------------------------------------------ settings


def test_profile_has_the_settings_proven_on_a_real_cluster(profile):
    assert profile["executor"] == "slurm"
    assert 0 < profile["jobs"] <= 1000  # far below the ~63,000 jobs of a UK Biobank cohort
    number, span = profile["max-jobs-per-timespan"].split("/")
    assert 0 < float(number) <= 20 and span == "1s"  # a considerate sbatch rate
    assert profile["latency-wait"] >= 30  # shared filesystems
    assert profile["retries"] >= 1 and profile["rerun-incomplete"] is True
    assert profile["slurm-logdir"]
    # sacct never reports a scancel'ed job as failed in plugin 2.8.0 (tests/slurm)
    assert profile["slurm-status-command"] == "squeue"
    # arrays deadlock past the jobs limit in plugin 2.8.0 (#473), groups run serially (#469)
    assert "slurm-array-jobs" not in profile
    assert "groups" not in profile and "group-components" not in profile


def test_defaults_leave_cpus_to_threads_and_the_cluster_to_the_user(profile):
    defaults = profile["default-resources"]
    assert defaults["runtime"] > 0 and defaults["mem_mb"] > 0
    # A default cpus_per_task overrides every rule's threads (the plugin prefers it).
    assert "cpus_per_task" not in defaults and "cpus_per_gpu" not in defaults
    # Partition and account are the user's (install-profile or an edit).
    assert "slurm_partition" not in defaults and "slurm_account" not in defaults


# ------------------------------------------------------------------ rules


def at_attempt(rule, name: str, attempt: int):
    """A rule's resource as Snakemake evaluates it for a job's given attempt (None if
    undeclared)."""
    resource = rule.resources.get(name)
    if hasattr(resource, "evaluate"):
        resource = resource.evaluate(None, attempt=attempt)
    return getattr(resource, "value", resource)


# Training resumes from its state file on a retry: more time is not needed.
RESUMING_RULES = {"train_age_model", "train_baseline"}


def test_every_rule_declares_memory_and_runtime(gpu_rules):
    problems = []
    for name, rule in job_rules(gpu_rules).items():
        for key in ("mem_mb", "runtime"):
            value = at_attempt(rule, key, 1)
            if not isinstance(value, (int, float)) or value <= 0:
                problems.append(f"{name}: {key} = {value!r}")
    assert not problems, "\n".join(problems)


def test_retries_ask_for_more_memory_and_time(gpu_rules):
    for name, rule in job_rules(gpu_rules).items():
        keys = ("mem_mb",) if name in RESUMING_RULES else ("mem_mb", "runtime")
        for key in keys:
            first, second, third = (at_attempt(rule, key, attempt) for attempt in (1, 2, 3))
            if key == "runtime" and third == MAX_RUNTIME:  # the partition's limit
                assert 0 < first <= second <= third, (name, key, first, second, third)
            else:
                assert 0 < first < second < third, (name, key, first, second, third)


MAX_RUNTIME = 2880  # resources.max_runtime's default


def test_gradcam_jobs_ask_for_the_time_their_method_needs(gpu_rules, tmp_path):
    """Integrated gradients cost about 28 HiResCAM maps (32 steps): their batch jobs ask for
    that much longer instead of being killed at a layer method's limit."""
    ig = load_rules(
        tmp_path / "one",
        train={"gpus": 1},
        gradcam={"method": "integrated_gradients", "steps": 32, "shifts": 1},
    )
    hirescam = at_attempt(gpu_rules["gradcam"], "runtime", 1) - batches.STARTUP_MINUTES
    integrated = at_attempt(ig["gradcam"], "runtime", 1) - batches.STARTUP_MINUTES
    assert integrated == pytest.approx(27.9 * hirescam, rel=0.05)
    # The demo's 8 shifts of 4 steps run as many passes as 32 steps, and ask for as long.
    shifted = load_rules(
        tmp_path / "shifted",
        train={"gpus": 1},
        gradcam={"method": "integrated_gradients", "steps": 4, "shifts": 2},
    )
    assert at_attempt(shifted["gradcam"], "runtime", 1) == at_attempt(ig["gradcam"], "runtime", 1)


def test_gradcam_jobs_ask_for_the_memory_their_method_needs(gpu_rules, tmp_path):
    """Integrated gradients hold a path volume's activations besides the model's (14,269 MiB
    at the full grid against Grad-CAM's 12,698): their jobs ask for that much more memory."""
    ig = load_rules(
        tmp_path, train={"gpus": 1}, gradcam={"method": "integrated_gradients", "steps": 32}
    )
    layer = at_attempt(gpu_rules["gradcam"], "mem_mb", 1)
    integrated = at_attempt(ig["gradcam"], "mem_mb", 1)
    assert integrated == pytest.approx(14269.2 / 12697.6 * layer, rel=0.01)


def test_batch_requests_follow_the_requests_file_and_the_device(gpu_rules, cpu_rules):
    """workflow/resources/batch_requests.yaml (from the benchmark records) sets what a batch
    asks for: Grad-CAM on a GPU does its participants in turn, on CPUs it spreads them over
    2 threads; CPU registration at full size is capped at the partition's limit."""
    requests = yaml.safe_load((REPO / "workflow/resources/batch_requests.yaml").read_text())
    demo = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    members = max(1, int(demo["batch"]["size"] * 1.25))
    gpu = requests["rules"]["gradcam"]["cuda"]
    assert at_attempt(gpu_rules["gradcam"], "runtime", 1) == int(
        batches.STARTUP_MINUTES + members * gpu["minutes_per_participant"] + 0.5
    )
    cpu = requests["rules"]["gradcam"]["cpu"]
    assert at_attempt(cpu_rules["gradcam"], "runtime", 1) == int(
        batches.STARTUP_MINUTES + members * cpu["minutes_per_participant"] / 2 + 0.5
    )
    assert at_attempt(cpu_rules["register"], "runtime", 3) == MAX_RUNTIME
    stitch = requests["rules"]["stitch"]["cpu"]["mb_per_process"]
    processes = min(demo["batch"]["threads"], members)
    scale = demo.get("resources", {}).get("mem_scale", 1.0)
    assert at_attempt(cpu_rules["stitch"], "mem_mb", 1) == max(100, int(stitch * scale * processes))


def test_the_profile_leaves_resources_and_gpus_to_the_rules(profile):
    """Declared once, in the rules: a profile `gpu:` would also override train.gpus."""
    assert "set-resources" not in profile


def test_gpu_rules_ask_for_a_gpu(gpu_rules):
    present = GPU_RULES & set(gpu_rules)
    assert {"train_age_model", "predict_age", "gradcam", "register"} <= present
    asking = {
        name for name, rule in job_rules(gpu_rules).items() if (declared(rule, "gpu") or 0) >= 1
    }
    assert present <= asking, f"GPU rules that ask for no GPU: {sorted(present - asking)}"
    assert asking <= GPU_RULES, (
        f"rules asking for a GPU that are not known GPU rules: {sorted(asking - GPU_RULES)}"
    )


def test_without_gpus_in_the_config_no_rule_asks_for_one(cpu_rules):
    asking = {
        name for name, rule in job_rules(cpu_rules).items() if (declared(rule, "gpu") or 0) > 0
    }
    assert not asking, asking


def test_registration_asks_for_a_gpu_only_when_configured(tmp_path):
    rules = load_rules(tmp_path, train={"gpus": 1}, registration={"gpus": 0})
    for name in REGISTRATION_RULES & set(rules):
        assert (declared(rules[name], "gpu") or 0) == 0, name
    assert declared(rules["train_age_model"], "gpu") == 1


def test_snakemake_accepts_the_profile(tmp_path):
    """A dry run through the profile (and an installed copy): every key is known to Snakemake."""
    installed = cli.install_profile("debug", "ageatlas", dest=tmp_path / "slurm")
    for profile_dir in (PROFILE.parent, installed.parent):
        run = subprocess.run(
            [
                SNAKEMAKE,
                "-n",
                "--profile",
                str(profile_dir),
                "--configfile",
                "config/demo.yaml",
                "--directory",
                str(tmp_path),
                "--snakefile",
                str(REPO / "Snakefile"),
                "--quiet",
                "rules",
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 0, (profile_dir, run.stdout[-2000:], run.stderr[-3000:])


# ------------------------------------------------------------------ install-profile


def test_install_profile_sets_partition_and_account_and_keeps_the_rest(tmp_path):
    target = cli.install_profile("gpu-a100", "proj_42", dest=tmp_path / "slurm")
    assert target == tmp_path / "slurm" / "config.yaml"
    installed, original = yaml.safe_load(target.read_text()), yaml.safe_load(PROFILE.read_text())
    defaults = installed.pop("default-resources")
    # Snakemake evaluates resource values as Python: the quotes keep them strings.
    assert eval(defaults.pop("slurm_partition")) == "gpu-a100"
    assert eval(defaults.pop("slurm_account")) == "proj_42"
    assert defaults == original.pop("default-resources")
    assert installed == original
    assert "slurm-status-command: squeue" in target.read_text()  # comments and all


def test_install_profile_quotes_names_python_would_evaluate(tmp_path):
    target = cli.install_profile("all", "max", dest=tmp_path / "p")
    defaults = yaml.safe_load(target.read_text())["default-resources"]
    assert eval(defaults["slurm_partition"]) == "all" and eval(defaults["slurm_account"]) == "max"


def test_install_profile_never_overwrites_without_force(tmp_path):
    dest = tmp_path / "slurm"
    cli.install_profile("p1", "a1", dest=dest)
    with pytest.raises(FileExistsError, match="--force"):
        cli.install_profile("p2", "a2", dest=dest)
    assert "'p1'" in (dest / "config.yaml").read_text()
    cli.install_profile("p2", "a2", dest=dest, force=True)
    text = (dest / "config.yaml").read_text()
    assert "'p2'" in text and "'p1'" not in text


def test_install_profile_command_line(tmp_path):
    dest = tmp_path / "slurm"
    args = [
        sys.executable,
        "-m",
        "ageatlas.cli",
        "install-profile",
        "--partition",
        "compute",
        "--account",
        "ukbb",
        "--dest",
        str(dest),
    ]
    first = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert str(dest / "config.yaml") in first.stdout and "--profile" in first.stdout
    again = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "--force" in again.stderr
    bad = subprocess.run(
        [*args[:-1], str(tmp_path / "other"), "--partition", "it's"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode != 0 and "not a usable SLURM name" in bad.stderr
