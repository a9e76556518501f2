"""Who is in the cohort: valid phenotype rows that have a field-20201 zip.

Runs when the workflow's DAG is built, so it must stay cheap for 100,000
participants: one directory scan, one vectorised validation. Every
participant that is left out gets a QC record saying why.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import phenotypes
from .layout import FIELD_ID
from .qc import EXCLUDED, QCRecord

_ZIP_NAME = re.compile(rf"^(\d+)_{FIELD_ID}_(\d+)_(\d+)\.zip$")


@dataclass
class Cohort:
    participants: pd.DataFrame  # eid, sex, age, bmi, zip (path), sorted by eid
    records: list[QCRecord]  # phenotype-stage exclusions and warnings

    @property
    def eids(self) -> list[str]:
        return [str(e) for e in self.participants["eid"]]


def find_zips(zip_dir: str | Path, instance: int = 2) -> dict[int, Path]:
    """Map eid -> zip path for ``{eid}_20201_{instance}_0.zip`` files in a folder."""
    zip_dir = Path(zip_dir)
    if not zip_dir.is_dir():
        raise FileNotFoundError(f"zip folder {zip_dir} does not exist (config: cohort.zip_dir)")
    found: dict[int, Path] = {}
    with os.scandir(zip_dir) as entries:
        for entry in entries:
            match = _ZIP_NAME.match(entry.name)
            if match and int(match.group(2)) == instance and match.group(3) == "0":
                found[int(match.group(1))] = zip_dir / entry.name
    return found


def discover(phenotype_path, zip_dir, schema: dict, columns=phenotypes.UKBB_COLUMNS, instance: int = 2) -> Cohort:
    """Validate the phenotype table and match it against the zips present."""
    table = phenotypes.read_table(phenotype_path, columns)
    valid, records = phenotypes.validate(table, schema, columns)
    zips = find_zips(zip_dir, instance)
    has_zip = valid["eid"].isin(zips.keys())
    for eid in valid.loc[~has_zip, "eid"]:
        records.append(QCRecord(str(eid), phenotypes.STAGE, EXCLUDED, [f"no zip {eid}_{FIELD_ID}_{instance}_0.zip in {zip_dir}"]))
    known = set(table["eid"])
    for eid in sorted(set(zips) - set(valid["eid"])):
        if str(eid) not in known:
            records.append(QCRecord(str(eid), phenotypes.STAGE, EXCLUDED, [f"zip {zips[eid].name} has no row in the phenotype table {phenotype_path}"]))
    participants = valid[has_zip].copy()
    participants["zip"] = [str(zips[e]) for e in participants["eid"]]
    return Cohort(participants.sort_values("eid").reset_index(drop=True), records)
