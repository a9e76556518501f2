"""The registration QC table: one row per registered test participant."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ageatlas.core.paths import eid_of_path

REGISTRATION_COLUMNS = (
    "eid",
    "group",
    "status",
    "reasons",
    "ncc_before",
    "ncc_affine",
    "ncc_deformable",
    "folding_share",
    "seconds",
)


def registration_table(record_paths) -> pd.DataFrame:
    """One row per registration record (register rule's JSON): status, reasons, similarity,
    folding."""
    rows = []
    for path in record_paths:
        record = json.loads(Path(path).read_text())
        rows.append(
            {
                "eid": record.get("eid", eid_of_path(path)),
                "group": record.get("group", ""),
                "status": record["status"],
                "reasons": "; ".join(record["reasons"]),
                "ncc_before": record.get("before", {}).get("ncc"),
                "ncc_affine": record.get("affine", {}).get("ncc"),
                "ncc_deformable": record.get("deformable", {}).get("ncc"),
                "folding_share": record.get("folding_share"),
                "seconds": record.get("seconds"),
            }
        )
    return pd.DataFrame(rows, columns=list(REGISTRATION_COLUMNS))
