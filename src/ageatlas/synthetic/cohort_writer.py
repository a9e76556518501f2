"""Write a whole SYNTHETIC cohort folder: one zip per participant, phenotypes and truth.

The synthetic cohort, module by module: ``participants`` (who), ``anatomy`` and ``phantom``
(their bodies, with planted age effects), ``acquisition`` (station images), ``defects`` and
``dicom`` (the field-20201 zip), ``truth`` (region label maps).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from ageatlas.core import field20201 as layout
from ageatlas.synthetic.dicom import write_participant_zip
from ageatlas.synthetic.participants import SyntheticParticipant, phenotype_table
from ageatlas.synthetic.truth import write_truth

log = logging.getLogger(__name__)


def write_cohort(
    out_dir: str | Path,
    participants: Sequence[SyntheticParticipant],
    *,
    scale: float = 1.0,
    defects_by_eid: Mapping[int, Sequence[str]] | None = None,
    seed: int = 0,
) -> None:
    """Write a cohort: one zip per participant, ``phenotypes.csv``, ``truth/`` and ``truth.tsv``.

    ``truth/`` holds one region label map per participant at 4 mm plus
    ``regions.tsv``; ``truth.tsv`` lists eid, sex, age, bmi, age_offset,
    biological_age, the table offset (LPS mm, where the body lies in the
    scanner) and the participant's defects (comma-separated, empty if none).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    defects_by_eid = {int(k): list(v) for k, v in (defects_by_eid or {}).items()}
    unknown = set(defects_by_eid) - {p.eid for p in participants}
    if unknown:
        raise ValueError(f"defects given for eids not in the cohort: {sorted(unknown)}")
    for i, p in enumerate(participants, 1):
        defects = defects_by_eid.get(p.eid, ())
        write_participant_zip(
            out / layout.zip_name(p.eid), p, scale=scale, defects=defects, seed=seed
        )
        write_truth(out / "truth", p)
        log.info(
            "SYNTHETIC participant %d/%d: eid %s, age %.1f, sex %d, BMI %.1f%s",
            i,
            len(participants),
            p.eid,
            p.age,
            p.sex,
            p.bmi,
            f", defects {', '.join(defects)}" if defects else "",
        )
    phenotype_table(participants).to_csv(out / "phenotypes.csv", index=False)
    truth = pd.DataFrame(
        {
            "eid": [p.eid for p in participants],
            "sex": [p.sex for p in participants],
            "age": [p.age for p in participants],
            "bmi": [p.bmi for p in participants],
            "age_offset": [p.age_offset for p in participants],
            "biological_age": [round(p.biological_age, 2) for p in participants],
            **{
                f"table_offset_{axis}_mm": [p.table_offset_mm[i] for p in participants]
                for i, axis in enumerate("xyz")
            },
            "defects": [",".join(defects_by_eid.get(p.eid, [])) for p in participants],
        }
    )
    truth.to_csv(out / "truth.tsv", sep="\t", index=False)


__all__ = [
    "write_cohort",
]
