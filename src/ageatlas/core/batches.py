"""Which participants share a job: stable batches of per-participant work.

A cohort of 100,000 cannot be one SLURM job per participant and rule
(docs/design.md, "Batches"). Each per-participant rule runs one job per
batch instead, and every participant still gets its own outputs, record
and log (:mod:`ageatlas.core.batch_run`).

A participant's batch depends on its eid and the batch count only:
``eid mod count``, with the count the smallest power of two that keeps
batches at about ``size`` participants. Adding participants therefore
never moves anyone to another batch, until the cohort doubles: then each
batch splits in two (a member of batch i of n goes to i or i + n of 2n),
and the finished participants of the old batches are reused from their
records, not redone. Size 1 means one job per participant, named by its
eid, as before batches existed.

Light on purpose: the workflow imports it when the DAG is built.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import yaml

# A batch wildcard: "<index>of<count>", or an eid when each participant is its own batch.
NAME_PATTERN = r"\d+(of\d+)?"


def batch_count(n_participants: int, size: int) -> int:
    """Batches for ``n_participants`` at about ``size`` each (a power of two); 0: one per
    participant."""
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    if size == 1:
        return 0
    if n_participants <= size:
        return 1
    return 1 << math.ceil(math.log2(n_participants / size))


def batch_name(eid: str | int, count: int) -> str:
    """The batch of ``eid`` among ``count`` batches (its eid when ``count`` is 0)."""
    if count == 0:
        return str(eid)
    try:
        number = int(eid)
    except ValueError:
        raise ValueError(f"eid {eid!r} is not a number: batches are dealt by eid") from None
    return f"{number % count:0{len(str(count - 1))}d}of{count}"


def plan(eids: Iterable[str | int], count: int) -> dict[str, list[str]]:
    """Batch name -> its eids (in the order given); empty batches are left out."""
    batches: dict[str, list[str]] = {}
    for eid in eids:
        batches.setdefault(batch_name(eid, count), []).append(str(eid))
    return dict(sorted(batches.items()))


# ---- what a batch job asks the cluster for --------------------------------------

# Minutes a batch job holds its allocation before and after its participants' work
# (the job step starts Snakemake, the pool its processes; measured about 15 s on the
# test cluster, more on a busy shared file system).
STARTUP_MINUTES = 10
REQUEST_KEYS = ("minutes_per_participant", "mb_per_process")


def load_requests(path: str | Path) -> dict[str, dict[str, dict]]:
    """rule -> device ("cpu", "cuda") -> per-participant request, from a file written by
    benchmarks/sizing.py --write-requests; a clear error names the file and entry."""
    try:
        rules = yaml.safe_load(Path(path).read_text())["rules"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as err:
        raise ValueError(f"batch requests {path}: not a requests file ({err})") from None
    for rule, devices in rules.items():
        for device, entry in devices.items():
            for key in REQUEST_KEYS:
                value = entry.get(key) if isinstance(entry, dict) else None
                if not isinstance(value, (int, float)) or value <= 0:
                    raise ValueError(f"batch requests {path}: {rule}.{device}.{key} is {value!r}")
    return rules


def scale_minutes(devices: dict[str, dict], factor: float) -> dict[str, dict]:
    """One rule's requests (device -> entry) with the per-participant minutes times ``factor``
    (a participant's work in units of what was measured)."""
    return {
        device: {**entry, "minutes_per_participant": entry["minutes_per_participant"] * factor}
        for device, entry in devices.items()
    }


def scale_memory(devices: dict[str, dict], factor: float) -> dict[str, dict]:
    """One rule's requests with the MB per process times ``factor``, rounded up."""
    return {
        device: {**entry, "mb_per_process": math.ceil(entry["mb_per_process"] * factor)}
        for device, entry in devices.items()
    }


def batch_request(
    entry: dict,
    members: int,
    threads: int,
    *,
    pooled: bool,
    gpu: bool = False,
    mem_scale: float = 1.0,
) -> tuple[float, int]:
    """(minutes, MB) a batch of ``members`` participants needs at the first attempt.

    pooled: ``threads`` single-threaded processes share the participants, each
    holding one participant. Otherwise one process does them: on a GPU one after
    another, on CPUs with the work spread over the job's threads (the per-participant
    minutes are core-minutes on CPUs).
    """
    per_participant = entry["minutes_per_participant"]
    processes = min(threads, members) if pooled else 1
    if pooled:
        work = math.ceil(members / processes) * per_participant
    elif gpu:
        work = members * per_participant
    else:
        work = members * per_participant / threads
    memory = max(100, int(entry["mb_per_process"] * mem_scale * processes))
    return STARTUP_MINUTES + work, memory
