"""Quality-control records: every participant ends ok, warning or excluded.

A defect in one participant's data raises `ParticipantExcluded` with a
reason a person can act on; the per-participant job catches it, writes the
record, and the workflow goes on with the others.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

OK = "ok"
WARNING = "warning"
EXCLUDED = "excluded"
STATUSES = (OK, WARNING, EXCLUDED)


class ParticipantExcluded(Exception):
    """A participant's data cannot be used; the message says why."""


@dataclass
class QCRecord:
    """Outcome of one stage for one participant."""

    eid: str
    stage: str
    status: str = OK
    reasons: list[str] = field(default_factory=list)

    def warn(self, reason: str) -> None:
        self.reasons.append(reason)
        if self.status == OK:
            self.status = WARNING

    def exclude(self, reason: str) -> None:
        self.reasons.append(reason)
        self.status = EXCLUDED

    @property
    def passed(self) -> bool:
        return self.status != EXCLUDED

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read_json(cls, path: str | Path) -> "QCRecord":
        return cls(**json.loads(Path(path).read_text()))


COLUMNS = ["eid", "stage", "status", "reasons"]


def records_frame(records: list[QCRecord]):
    """QC records as a table; reasons joined with '; '."""
    import pandas as pd

    rows = [(r.eid, r.stage, r.status, "; ".join(r.reasons)) for r in records]
    return pd.DataFrame(rows, columns=COLUMNS)


_RANK = {OK: 0, WARNING: 1, EXCLUDED: 2}


class TooManyExcluded(RuntimeError):
    """So many participants failed that a bug or a wrong config is likelier than bad data."""


def participant_table(records: list[QCRecord]):
    """One row per participant: worst status over stages, every reason prefixed by its stage."""
    import pandas as pd

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


def read_records_tsv(path) -> list[QCRecord]:
    """QC records from a table written with records_frame."""
    import pandas as pd

    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    return [QCRecord(r.eid, r.stage, r.status, [s for s in r.reasons.split("; ") if s])
            for r in frame.itertuples()]


REGISTRATION_COLUMNS = (
    "eid", "group", "status", "reasons", "ncc_before", "ncc_affine", "ncc_deformable",
    "folding_share", "seconds",
)


def registration_table(record_paths) -> "pd.DataFrame":
    """One row per registration record (register rule's JSON): status, reasons, similarity, folding."""
    import pandas as pd

    from ageatlas.aggregate import eid_of_path

    rows = []
    for path in record_paths:
        record = json.loads(Path(path).read_text())
        rows.append({
            "eid": record.get("eid", eid_of_path(path)),
            "group": record.get("group", ""),
            "status": record["status"],
            "reasons": "; ".join(record["reasons"]),
            "ncc_before": record.get("before", {}).get("ncc"),
            "ncc_affine": record.get("affine", {}).get("ncc"),
            "ncc_deformable": record.get("deformable", {}).get("ncc"),
            "folding_share": record.get("folding_share"),
            "seconds": record.get("seconds"),
        })
    return pd.DataFrame(rows, columns=list(REGISTRATION_COLUMNS))
