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
