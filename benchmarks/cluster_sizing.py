"""Cluster sizing from saved benchmark records: CPU core-hours, GPU-hours and disk per stage.

A record is the JSON file a benchmark writes with ``--save`` (benchmarks/
ingest.py, train.py, explain.py; benchmarks/sizing.py writes the disk
record): what was measured, with the command, date and machine that
measured it. benchmarks/records/ holds the ones behind the README's figures.
This module only does arithmetic on them, so the README's sizing table can
be recomputed (and tested) without rerunning a benchmark:

  core-hours  = wall seconds x the threads the benchmark ran on x units / 3600
                (what a cluster bills for the cores a job holds)
  GPU-hours   = wall seconds on one GPU x units / 3600, only from a record
                measured on CUDA; otherwise None ("not measured"), never a guess
  units       = what the workflow does per run, from the config: the split
                sizes, epochs (training validates on the val split every
                epoch), the registration protocol and the atlas members

Every stage but the atlas scales with the participants; the atlas is a fixed
cost (groups x members x template iterations registrations).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ageatlas.cohort import table as cohort
from ageatlas.core.batches import batch_count
from ageatlas.core.vocabulary import group_names

RECORD_KEYS = ("benchmark", "source", "command", "date", "machine", "data", "results")
MEASURED = "measured by the command"
# Stages that run on a GPU when there is one; the others are CPU jobs.
GPU_KEYS = {"train3d", "infer3d", "gradcam", "registration", "warp", "train25d", "infer25d"}


# ---- records -----------------------------------------------------------------


def cpu_name() -> str:
    """The CPU model, from /proc/cpuinfo where there is one."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(
                line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    return name


def machine() -> str:
    """The CPU model and core count (results say which device they ran on)."""
    return f"{cpu_name()}, {os.cpu_count()} cores"


def make_record(benchmark: str, results: dict, *, data: str, source: str = MEASURED) -> dict:
    """A record of this process's measurement (the command is this process's own)."""
    command = shlex.join([os.path.relpath(sys.executable), *sys.argv])
    return {
        "benchmark": benchmark,
        "source": source,
        "command": command,
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "data": data,
        "results": results,
    }


def save_record(path, record: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(record, indent=2) + "\n")


def load_record(path, benchmark: str) -> dict:
    """A saved record; refuses another benchmark's or a malformed one rather than mis-sizing."""
    record = json.loads(Path(path).read_text())
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing or record["benchmark"] != benchmark:
        raise ValueError(
            f"{path} is not a {benchmark!r} benchmark record "
            f"(benchmark {record.get('benchmark')!r}, missing {missing})"
        )
    return record


# ---- per-unit rates from records ----------------------------------------------


def rates(
    ingest: dict | None,
    trains: list[dict],
    explains: list[dict],
    disk: dict,
    settings: Settings,
    sources: dict | None = None,
) -> dict[str, dict[str, float]]:
    """{"cpu": {key: core-seconds per unit}, "cuda": {key: GPU-seconds per unit}}; a later record
    wins. ``sources``, if given, gets "key/device" -> the record each rate came from."""
    out: dict[str, dict[str, float]] = {"cpu": {}, "cuda": {}}
    sources = {} if sources is None else sources

    def put(device: str, key: str, seconds, threads: int, record: dict) -> None:
        if seconds is not None:
            out[device][key] = float(seconds) * threads
            sources[f"{key}/{device}"] = record

    grid = "x".join(map(str, settings.grid))
    expected = {"3d": f"1x{grid}", "2.5d": "2x" + "x".join(map(str, settings.projection_size))}
    _check(disk, "x".join(map(str, disk["results"]["grid"])), grid)
    if ingest:
        r = ingest["results"]
        put("cpu", "ingest", r["steps"]["ageatlas"]["seconds"], r["threads"], ingest)
    d = disk["results"]
    for key in ("preprocess", "projection"):
        put("cpu", key, d["seconds"][key], d["threads"], disk)
    model_key = {"3d": ("train3d", "infer3d"), "2.5d": ("train25d", "infer25d")}
    for record in trains:
        for row in record["results"]["rows"]:
            _check(record, row["input"], expected[row["model"]])
            device, threads = row["device_type"], _threads(row)
            train_key, infer_key = model_key[row["model"]]
            put(device, train_key, row["training"], threads, record)
            put(device, infer_key, row["inference"], threads, record)
    for record in explains:
        r = record["results"]
        _check(record, "x".join(map(str, r["gradcam"]["shape"])), grid)
        device, threads, reg = r["device_type"], _threads(r), r["registration"]
        put(device, "gradcam", r["gradcam"]["seconds"], threads, record)
        if device == "cuda":  # the whole protocol, run until it converged
            put(device, "registration", reg["seconds"], 1, record)
        else:  # short runs' rates, scaled to the protocol's iterations
            seconds = (
                settings.affine_iterations * reg["seconds_per_affine_iteration"]
                + settings.steps_per_level * reg["seconds_per_step_all_levels"]
            )
            put(device, "registration", seconds, threads, record)
        put(device, "warp", reg.get("warp_seconds"), threads, record)
    return out


def _check(record: dict, measured: str, expected: str) -> None:
    """A record measured at another size than the config's would size the wrong thing."""
    if measured != expected:
        raise ValueError(
            f"{record['benchmark']} record ({record['command']}) measured {measured}, "
            f"the config's size is {expected}"
        )


def _threads(result: dict) -> int:
    return 1 if result["device_type"] == "cuda" else int(result["threads"])


# ---- what the workflow does for n participants --------------------------------


@dataclass(frozen=True)
class Settings:
    """The config values that set how much work a run is (workflow/schemas/config.schema.yaml)."""

    split_sizes: dict
    grid: tuple = (224, 174, 370)  # stitch.grid.shape: what the records must have measured
    projection_size: tuple = (256, 256)
    epochs_3d: int = 100
    epochs_25d: int = 100
    baseline_train_splits: tuple = ("train",)
    affine_iterations: int = 200
    steps_per_level: int = 1000  # registration.max_steps: the protocol's upper bound
    atlas_groups: int = 6
    atlas_members: int = 50  # per group; 0: all
    atlas_iterations: int = 2
    atlas_splits: tuple = ("train", "val")
    batch_size: int = 400  # batch.size: participants per per-participant job
    batch_threads: int = 4  # batch.threads: processes per batch job

    @classmethod
    def from_config(cls, config: dict, steps_per_level: int | None = None) -> Settings:
        """From a validated config (schema defaults filled in)."""
        reg, atlas = config["registration"], config["atlas"]
        return cls(
            split_sizes=dict(config["split"]["sizes"]),
            grid=tuple(config["stitch"]["grid"]["shape"]),
            projection_size=tuple(config["projection"]["size"]),
            epochs_3d=config["train"]["epochs"],
            epochs_25d=config["baseline"]["epochs"],
            baseline_train_splits=tuple(config["baseline"]["train_splits"]),
            affine_iterations=reg["affine_iterations"],
            steps_per_level=steps_per_level or reg["max_steps"],
            atlas_groups=len(group_names()) - len(atlas["given"]),
            atlas_members=atlas["n_members"],
            atlas_iterations=atlas["iterations"],
            atlas_splits=tuple(atlas["splits"]),
            batch_size=config["batch"]["size"],
            batch_threads=config["batch"]["threads"],
        )


def split_counts(n: int, sizes: dict) -> dict[str, int]:
    """Participants per split for n, as ageatlas.cohort.table splits them.

    Counts (the paper's 1536/384/1200) are read as the fractions they make
    of their sum: sizing asks what n participants cost with that split.
    """
    if all(isinstance(v, int) and not isinstance(v, bool) for v in sizes.values()):
        total = sum(sizes.values())
        sizes = {k: v / total for k, v in sizes.items()}
    counts = cohort.split_sizes(n, sizes)
    return {**counts, "unused": n - sum(counts.values())}


@dataclass(frozen=True)
class Stage:
    name: str
    basis: str  # the work, in words
    work: dict = field(default_factory=dict)  # rate key -> units
    disk: dict = field(default_factory=dict)  # disk key -> files written
    jobs: int = 1  # SLURM jobs: batches of a per-participant rule, 1 for a cohort-level one
    parallel: int = 1  # participants a job works on at once (its process pool)

    @property
    def gpu(self) -> bool:
        return bool(set(self.work) & GPU_KEYS)


def stages(n: int, s: Settings) -> list[Stage]:
    c = split_counts(n, s.split_sizes)
    cohort_n = c["train"] + c["val"] + c["test"]  # cache_paths("train", "val", "test")
    baseline_train = sum(c[k] for k in s.baseline_train_splits)
    projected = baseline_train + c["val"] + c["test"]
    predicted, test = c["val"] + c["test"], c["test"]
    # Atlas members per group: the groups are balanced by the split (sex x BMI).
    pool = sum(c[k] for k in s.atlas_splits) // len(group_names())
    members = pool if s.atlas_members == 0 else min(s.atlas_members, pool)
    atlas_regs = s.atlas_groups * members * s.atlas_iterations
    templates = s.atlas_groups * (s.atlas_iterations + 1)
    protocol = f"{s.affine_iterations} affine iterations + {s.steps_per_level:,} steps a level"
    count = batch_count(n, s.batch_size)

    def batches(participants: int, total: int = count) -> int:
        """Non-empty batches (eid mod count): at most one per participant."""
        return min(total, participants) if total else participants

    per_group = test // len(group_names())
    group_batches = len(group_names()) * batches(per_group, batch_count(per_group, s.batch_size))
    pool = {"parallel": s.batch_threads}
    return [
        Stage(
            "ingest: zip -> stitched W + F",
            f"{n:,} zips",
            {"ingest": n},
            {"stitched": n},
            jobs=batches(n),
            **pool,
        ),
        Stage(
            "preprocess: training cache",
            f"{cohort_n:,} volumes",
            {"preprocess": cohort_n},
            {"cache": cohort_n},
            jobs=batches(cohort_n),
            **pool,
        ),
        Stage(
            "2.5D projections",
            f"{projected:,} participants",
            {"projection": projected},
            {"projection": projected},
            jobs=batches(projected),
            **pool,
        ),
        Stage(
            "3D training",
            f"{s.epochs_3d} epochs x ({c['train']:,} train + {c['val']:,} val)",
            {"train3d": s.epochs_3d * c["train"], "infer3d": s.epochs_3d * c["val"]},
        ),
        Stage("3D inference", f"{predicted:,} val + test", {"infer3d": predicted}),
        Stage(
            "Grad-CAM", f"{test:,} test", {"gradcam": test}, {"gradcam": test}, jobs=batches(test)
        ),
        Stage(
            "atlases (fixed per run)",
            f"{atlas_regs:,} registrations ({s.atlas_groups} groups x {members} x "
            f"{s.atlas_iterations} passes)",
            {"registration": atlas_regs, "warp": atlas_regs},
            {"atlas_member": atlas_regs, "template": templates},
            # one registration job and one update per group and pass
            jobs=2 * s.atlas_groups * s.atlas_iterations,
        ),
        Stage(
            "registration to the group atlas",
            f"{test:,} test x ({protocol})",
            {"registration": test},
            {"registration": test},
            jobs=group_batches,
        ),
        Stage(
            "warp Grad-CAM maps",
            f"{test:,} test",
            {"warp": test},
            {"warped": test},
            jobs=group_batches,
            **pool,
        ),
        Stage(
            "2.5D training",
            f"{s.epochs_25d} epochs x ({baseline_train:,} train + {c['val']:,} val)",
            {"train25d": s.epochs_25d * baseline_train, "infer25d": s.epochs_25d * c["val"]},
        ),
        Stage("2.5D inference", f"{predicted:,} val + test", {"infer25d": predicted}),
    ]


@dataclass(frozen=True)
class Hours:
    """Hours of the measured part of a stage's work; partial: some of it has no rate (a lower
    bound)."""

    value: float
    partial: bool = False


def hours(stage: Stage, device_rates: dict[str, float]) -> Hours | None:
    """Hours of the stage's work at these per-unit seconds; None when no part of it was measured."""
    keys = [key for key, units in stage.work.items() if units]
    measured = [key for key in keys if key in device_rates]
    if not measured:
        return None
    return Hours(
        sum(stage.work[key] * device_rates[key] for key in measured) / 3600,
        len(measured) < len(keys),
    )


def gib(stage: Stage, bytes_per_file: dict[str, float]) -> float | str:
    if not stage.disk:
        return "-"  # no per-participant files (a model checkpoint and tables, not counted)
    return sum(files * bytes_per_file[key] for key, files in stage.disk.items()) / 2**30


# Seconds a SLURM job holds its allocation beyond its work: the plugin's job step and srun
# each start Snakemake (measured on the test cluster: a 1-2 s job held it about 15 s;
# docs/measurements.md, "The SLURM profile on a real cluster").
JOB_STARTUP_S = 15


def job_hours(stage: Stage, cpu: Hours | None) -> Hours | None:
    """Allocation hours of the stage's jobs on CPUs: start-up plus the work spread over each
    job's process pool (None when the work was not measured)."""
    if cpu is None:
        return None
    return Hours(stage.jobs * JOB_STARTUP_S / 3600 + cpu.value / stage.parallel, cpu.partial)


def cost(n: int, s: Settings, rate: dict, bytes_per_file: dict) -> list[dict]:
    """Per stage: name, basis, cpu_h, gpu_h (Hours; None: not measured; "-": a CPU stage),
    disk_gib, SLURM jobs and their allocation hours on CPUs (job_h)."""
    rows = []
    for st in stages(n, s):
        cpu_h = hours(st, rate["cpu"])
        rows.append(
            {
                "stage": st.name,
                "basis": st.basis,
                "cpu_h": cpu_h,
                "gpu_h": hours(st, rate["cuda"]) if st.gpu else "-",
                "disk_gib": gib(st, bytes_per_file),
                "jobs": st.jobs,
                "job_h": job_hours(st, cpu_h),
            }
        )
    return rows


# ---- the table ------------------------------------------------------------------


def fmt(value) -> str:
    if value is None:
        return "not measured"
    if isinstance(value, str):
        return value
    if isinstance(value, Hours):
        return ("≥ " if value.partial else "") + fmt(value.value)
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}" if value >= 1 else f"{value:.2f}"


def total(values: list) -> str:
    """A column's sum; "≥" when a part is not measured, "not measured" when none is."""
    values = [v for v in values if v != "-"]
    measured = [v for v in values if v is not None]
    if not measured:
        return "not measured"
    partial = len(measured) < len(values) or any(v.partial for v in measured)
    return fmt(Hours(sum(v.value for v in measured), partial))


def markdown(s: Settings, rate: dict, bytes_per_file: dict, sizes=(1000, 3120, 100_000)) -> str:
    """One row per stage: its work per 1,000 participants, and core-hours, GPU-hours, GiB for each
    size."""
    tables = {n: cost(n, s, rate, bytes_per_file) for n in sizes}
    head = ["stage", f"work per {sizes[0]:,} participants"]
    for n in sizes:
        head += [
            f"CPU core-h, {n:,}",
            f"GPU-h, {n:,}",
            f"disk GiB, {n:,}",
            f"SLURM jobs, {n:,}",
            f"job-h on CPUs, {n:,}",
        ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, row in enumerate(tables[sizes[0]]):
        cells = [row["stage"], row["basis"]]
        for n in sizes:
            r = tables[n][i]
            cells += [
                fmt(r["cpu_h"]),
                fmt(r["gpu_h"]),
                fmt(r["disk_gib"]),
                f"{r['jobs']:,}",
                fmt(r["job_h"]),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    cells = ["**total**", ""]
    for n in sizes:
        rows = tables[n]
        cells += [
            total([r["cpu_h"] for r in rows]),
            total([r["gpu_h"] for r in rows]),
            fmt(sum(r["disk_gib"] for r in rows if r["disk_gib"] != "-")),
            f"{sum(r['jobs'] for r in rows):,}",
            total([r["job_h"] for r in rows]),
        ]
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---- what a batch job asks SLURM for ---------------------------------------------
# The workflow's batch rules ask for runtime and memory from the file written here
# (workflow/resources/batch_requests.yaml, read by batch_resources in common.smk):
# per participant, from the records, times a margin; where no record measures a
# value, an assumption that says so. A GPU record (benchmarks/gpu_check.sh) replaces
# the assumed GPU minutes when sizing.py --write-requests is run again.

# One synthetic participant on one machine: real participants (larger bodies, more
# stations), shared nodes and slow file systems take longer; a retry asks for more.
TIME_MARGIN = 3.0
MEMORY_MARGIN = 1.5

# rule -> (rate key, the devices it can run on)
BATCH_RULES = {
    "stitch": ("ingest", ("cpu",)),
    "preprocess": ("preprocess", ("cpu",)),
    "projection": ("projection", ("cpu",)),
    "gradcam": ("gradcam", ("cpu", "cuda")),
    "register": ("registration", ("cpu", "cuda")),
    "atlas_register": ("registration", ("cpu", "cuda")),
    "warp_gradcam": ("warp", ("cpu",)),
}

# Not measured by any record yet: (core- or GPU-minutes per participant, MB per process).
ASSUMED = {
    ("preprocess", "cpu"): (None, 2000),
    ("projection", "cpu"): (None, 2000),
    ("gradcam", "cuda"): (0.5, 16000),
    ("registration", "cuda"): (5.0, 16000),
    ("warp", "cpu"): (0.2, 8000),
}


def _peak_mib(ingest: dict | None, explains: list[dict]) -> dict[tuple[str, str], tuple]:
    """(rate key, device) -> (peak MiB of one process, the record's command) where measured."""
    peaks = {}
    if ingest:
        peaks[("ingest", "cpu")] = (ingest["results"]["steps"]["ageatlas"]["peak_mib"], ingest)
    for record in explains:
        r = record["results"]
        for key, part in (("gradcam", r["gradcam"]), ("registration", r["registration"])):
            if part.get("peak_mib"):
                peaks[(key, r["device_type"])] = (part["peak_mib"], record)
    return peaks


def _source(record: dict | None) -> str:
    return f"{record['command']} ({record['date']})" if record else "assumed, not measured"


def batch_requests(
    rate: dict, ingest: dict | None, explains: list[dict], records: dict[str, dict]
) -> dict:
    """Per batch rule and device: minutes of work per participant (core-minutes on CPUs,
    minutes on one GPU) and MB per process, each with where it came from, margins applied.

    rate: rates(); records: the sources rates() filled in (the record behind each rate).
    """
    peaks = _peak_mib(ingest, explains)
    rules = {}
    for rule, (key, devices) in BATCH_RULES.items():
        rules[rule] = {}
        for device in devices:
            assumed_minutes, assumed_mb = ASSUMED.get((key, device), (None, None))
            seconds = rate[device].get(key)
            if seconds is not None:
                minutes = round(seconds / 60 * TIME_MARGIN, 3)
                time_source = _source(records.get(f"{key}/{device}"))
                if key == "registration" and device == "cpu":  # short runs' rates, see rates()
                    time_source += ", scaled to the protocol's affine iterations and max_steps"
            elif assumed_minutes is not None:
                minutes, time_source = assumed_minutes, _source(None)
            else:
                raise ValueError(f"{rule} on {device}: no record times it and no assumption")
            if (key, device) in peaks:
                mib, record = peaks[(key, device)]
                mb = int(-(-mib * 1.048576 * MEMORY_MARGIN // 100) * 100)
                memory_source = _source(record)
            else:
                mb, memory_source = assumed_mb, _source(None)
            rules[rule][device] = {
                "minutes_per_participant": minutes,
                "minutes_from": time_source,
                "mb_per_process": mb,
                "mb_from": memory_source,
            }
    return {"time_margin": TIME_MARGIN, "memory_margin": MEMORY_MARGIN, "rules": rules}
