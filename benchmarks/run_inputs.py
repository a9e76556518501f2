"""A finished run's test participants as the workflow's gradcam rule reads them, for benchmarks
that attribute them again (evidence_regions.py, ig_convergence.py)."""

from __future__ import annotations

from pathlib import Path

from ageatlas.core import paths
from ageatlas.explain.gradcam import model_seed, read_participant
from ageatlas.explain.reference_attribution import reference_for


def against_group_atlas(results: Path, eid: str, group: str, meta: dict):
    """(participant, model input volume, its group atlas brought into the body) of one test
    participant of the run in ``results``; ``meta``, the checkpoint's (``load_trained``)."""
    stitched = paths.stitched_path(results / paths.STITCHED.format(eid=eid), eid, "W")
    participant = read_participant(str(results / paths.CACHE).format(eid=eid), stitched)
    volume = participant.volume(model_seed(meta))
    atlas = (
        results / paths.ATLAS / f"{group}.nii.gz",
        results / paths.EXPLAIN / group / "registration" / f"{eid}.pt",
    )
    reference, _ = reference_for(participant, volume, atlas=atlas)
    return participant, volume, reference
