"""The participant QC table: one row per participant, worst status over all stages.

It is written after ingest (qc_table rule) from the phenotype QC records and
every participant's ingest record, and refuses to go on when so many
participants failed that a bug or a wrong config is likelier than bad data.
"""

from __future__ import annotations

import pandas as pd

from ageatlas.core.qc import EXCLUDED, OK, WARNING, QCRecord

_RANK = {OK: 0, WARNING: 1, EXCLUDED: 2}


class TooManyExcluded(RuntimeError):
    """So many participants failed that a bug or a wrong config is likelier than bad data."""


def participant_table(records: list[QCRecord]):
    """One row per participant: worst status over stages, every reason prefixed by its stage."""
    by_eid: dict[str, dict] = {}
    for rec in records:
        row = by_eid.setdefault(rec.eid, {"eid": rec.eid, "status": OK, "stage": "", "reasons": []})
        if _RANK[rec.status] > _RANK[row["status"]]:
            row["status"] = rec.status
            row["stage"] = rec.stage
        row["reasons"] += [f"{rec.stage}: {r}" for r in rec.reasons]
    rows = sorted(by_eid.values(), key=lambda r: (len(r["eid"]), r["eid"]))
    for row in rows:
        row["reasons"] = "; ".join(row["reasons"])
    return pd.DataFrame(rows, columns=["eid", "status", "stage", "reasons"])


def check_excluded_fraction(records: list[QCRecord], stage: str, limit: float) -> None:
    """Raise TooManyExcluded if more than ``limit`` of a stage's participants were excluded."""
    staged = [r for r in records if r.stage == stage]
    excluded = [r for r in staged if r.status == EXCLUDED]
    if staged and len(excluded) / len(staged) > limit:
        examples = "; ".join(f"{r.eid}: {' '.join(r.reasons)}" for r in excluded[:3])
        raise TooManyExcluded(
            f"{len(excluded)} of {len(staged)} participants were excluded at {stage} "
            f"(limit qc.max_excluded_fraction = {limit}). That many failures usually means "
            f"a wrong config or a bug, not bad data. First ones: {examples}"
        )


def ingest_records(stitched_dirs, manifests, stage: str, qc_file: str) -> list[QCRecord]:
    """Each participant's ingest QC record; one whose stitch failed in its batch is excluded.

    ``manifests`` are the stitch batches' (ageatlas.core.batch_run): a
    participant the batch could not finish (a crash outside the reader's
    own checks, a killed worker) has no trustworthy qc.json, so its row
    says what failed and where its log is, instead of stopping the table.
    """
    from pathlib import Path

    from ageatlas.core.batch_run import FAILED, failure_reason, manifest_rows

    records = []
    for folder, row in manifest_rows(stitched_dirs, manifests):
        if row["status"] == FAILED:
            record = QCRecord(row["eid"], stage)
            record.exclude(failure_reason(row))
            records.append(record)
        else:
            records.append(QCRecord.read_json(Path(folder) / qc_file))
    return records
