"""Write a whole SYNTHETIC cohort folder: one zip per participant, phenotypes and truth.

The synthetic cohort, module by module: ``participants`` (who), ``anatomy`` and ``phantom``
(their bodies, with planted age effects), ``acquisition`` (station images), ``defects`` and
``dicom`` (the field-20201 zip), ``truth`` (region label maps).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import as_completed
from pathlib import Path

import pandas as pd

from ageatlas.core import field20201 as layout
from ageatlas.core.batch_run import process_pool
from ageatlas.synthetic.dicom import write_participant_zip
from ageatlas.synthetic.participants import SyntheticParticipant, phenotype_table
from ageatlas.synthetic.truth import write_label_map, write_label_table

log = logging.getLogger(__name__)


def write_cohort(
    out_dir: str | Path,
    participants: Sequence[SyntheticParticipant],
    *,
    scale: float = 1.0,
    defects_by_eid: Mapping[int, Sequence[str]] | None = None,
    seed: int = 0,
    workers: int = 1,
) -> None:
    """Write a cohort: one zip per participant, ``phenotypes.csv``, ``truth/`` and ``truth.tsv``.

    ``truth/`` holds one region label map per participant at 4 mm plus
    ``regions.tsv``; ``truth.tsv`` lists eid, sex, age, bmi, age_offset,
    biological_age, the table offset (LPS mm, where the body lies in the
    scanner) and the participant's defects (comma-separated, empty if none).
    ``workers`` processes write participants side by side; each participant's
    files depend only on it and ``seed``, so the cohort is the same for any
    number of workers.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    defects_by_eid = {int(k): list(v) for k, v in (defects_by_eid or {}).items()}
    unknown = set(defects_by_eid) - {p.eid for p in participants}
    if unknown:
        raise ValueError(f"defects given for eids not in the cohort: {sorted(unknown)}")
    jobs = [(out, p, scale, tuple(defects_by_eid.get(p.eid, ())), seed) for p in participants]
    if workers > 1 and len(jobs) > 1:
        with process_pool(min(workers, len(jobs))) as pool:
            futures = [pool.submit(_write_participant, *job) for job in jobs]
            for i, future in enumerate(as_completed(futures), 1):
                _log_written(i, len(jobs), future.result())
    else:
        for i, job in enumerate(jobs, 1):
            _log_written(i, len(jobs), _write_participant(*job))
    write_label_table(out / "truth")
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


def _write_participant(out: Path, p: SyntheticParticipant, scale, defects, seed):
    """One participant's zip and truth label map; returns what the log line names."""
    write_participant_zip(out / layout.zip_name(p.eid), p, scale=scale, defects=defects, seed=seed)
    write_label_map(out / "truth", p)
    return p, defects


def _log_written(i: int, n: int, written) -> None:
    p, defects = written
    log.info(
        "SYNTHETIC participant %d/%d: eid %s, age %.1f, sex %d, BMI %.1f%s",
        i,
        n,
        p.eid,
        p.age,
        p.sex,
        p.bmi,
        f", defects {', '.join(defects)}" if defects else "",
    )


__all__ = [
    "write_cohort",
]
