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
    def read_json(cls, path: str | Path) -> QCRecord:
        return cls(**json.loads(Path(path).read_text()))


COLUMNS = ["eid", "stage", "status", "reasons"]


def records_frame(records: list[QCRecord]):
    """QC records as a table; reasons joined with '; '."""
    import pandas as pd

    rows = [(r.eid, r.stage, r.status, "; ".join(r.reasons)) for r in records]
    return pd.DataFrame(rows, columns=COLUMNS)


def read_records_tsv(path) -> list[QCRecord]:
    """QC records from a table written with records_frame."""
    import pandas as pd

    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    return [
        QCRecord(r.eid, r.stage, r.status, [s for s in r.reasons.split("; ") if s])
        for r in frame.itertuples()
    ]
