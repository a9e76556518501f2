"""One participant, zip to stitched NIfTI: the body of the workflow's stitch job.

Whatever a participant's data throw at us ends as a QC record, never as a
failed job: defects the reader or stitcher recognise raise
`ParticipantExcluded` with a reason; anything else is caught too, logged
with its traceback and recorded as an unexpected error, so one broken
participant out of thousands neither stops the run nor needs --keep-going.
The qc_table rule then refuses to go on if too many participants fail
(that smells of a bug or a wrong config, not of bad data).
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path

import numpy as np

from ageatlas.core.files import nifti_image, save_nifti
from ageatlas.core.paths import stitched_path
from ageatlas.core.qc import ParticipantExcluded, QCRecord
from ageatlas.ingest import reader, stitch
from ageatlas.ingest.grid import Grid

STAGE = "ingest"
QC_FILE = "qc.json"

log = logging.getLogger(__name__)


def settings_from_config(section: dict) -> tuple[Grid, stitch.StitchOptions, bool]:
    """The grid, stitch options and preview flag of the config's ``stitch`` section."""
    grid = Grid(tuple(section["grid"]["shape"]), tuple(section["grid"]["spacing"]))
    options = stitch.StitchOptions(
        trim_slices=section["trim_slices"],
        blend=section["blend"],
        harmonise=section["harmonise"],
        fix_swaps=section["fix_swaps"],
        n4=section["n4"],
        contrasts=tuple(section["contrasts"]),
    )
    return grid, options, bool(section["preview"])


def ingest_participant(
    eid: str,
    zip_path: str | Path,
    out_dir: str | Path,
    grid: Grid,
    options: stitch.StitchOptions,
    preview: bool = True,
) -> QCRecord:
    """Read, stitch and write one participant; always writes ``out_dir/qc.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = QCRecord(str(eid), STAGE)
    start = time.perf_counter()
    try:
        result = _read_and_stitch(zip_path, grid, options, record)
        for contrast, image in result.images.items():
            # int16 with scl_slope: for 12-bit scanner intensities the error is
            # ~1e-5 of the range, while file size and gzip time halve.
            description = f"ageatlas stitched {contrast} eid {eid}"
            image = nifti_image(image, result.affine, description, dtype=np.int16)
            save_nifti(stitched_path(out_dir, eid, contrast), image)
        if preview:
            from ageatlas.ingest.preview import stitch_preview

            stitch_preview(
                result.images,
                grid.spacing,
                out_dir / f"{eid}_preview.png",
                title=f"{eid} (stitched)",
            )
    except ParticipantExcluded as err:
        record.exclude(str(err))
    except Exception as err:  # noqa: BLE001 - any defect must end as a QC row, see module doc
        log.error("participant %s: unexpected error\n%s", eid, traceback.format_exc())
        record.exclude(f"unexpected error reading {zip_path}: {type(err).__name__}: {err}")
    if not record.passed:
        for leftover in out_dir.glob("*.nii.gz"):
            leftover.unlink()  # never leave half a participant behind
    record.write_json(out_dir / QC_FILE)
    log.info(
        "participant %s: %s in %.2f s%s",
        eid,
        record.status,
        time.perf_counter() - start,
        "".join(f"\n  - {r}" for r in record.reasons),
    )
    return record


def _read_and_stitch(zip_path, grid, options, record: QCRecord) -> stitch.StitchResult:
    stations, warnings = reader.read_participant(zip_path, contrasts=options.contrasts)
    for warning in warnings:
        record.warn(warning)
    result = stitch.stitch(stations, grid, options)
    for note in result.notes:
        record.warn(note)
    for fact in result.info:
        log.info("%s", fact)
    return result
