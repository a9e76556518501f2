"""Where a run writes what: one folder per stage under ``results_dir``.

A stage has one name, used by its rule file (workflow/rules/<stage>*.smk), its
subpackage (ageatlas.<stage>) and its results folder (<results_dir>/<stage>/).
The rules (workflow/rules/common.smk) and ``ageatlas where`` both take their
paths from here. Templates are relative to results_dir; {eid} and {group}
are Snakemake wildcards.
"""

from __future__ import annotations

from pathlib import Path

SYNTHETIC = "synthetic"  # the SYNTHETIC cohort's zips, phenotypes and truth
INGEST = "ingest"  # zip -> stitched NIfTI
COHORT = "cohort"  # phenotype QC, participant QC, groups and split
AGE = "age"  # training cache, 3D model, predictions, Table 1
BASELINE = "baseline"  # the 2.5D baseline
EXPLAIN = "explain"  # Grad-CAM, atlases, registration, population maps

STITCHED = f"{INGEST}/{{eid}}"  # {eid}_W.nii.gz, {eid}_F.nii.gz, {eid}_preview.png, qc.json
PHENOTYPE_QC = f"{COHORT}/phenotype_qc.tsv"
PARTICIPANT_QC = f"{COHORT}/participant_qc.tsv"
COHORT_TABLE = f"{COHORT}/cohort.tsv"
PARTICIPANT_FAILURES = f"{COHORT}/participant_failures.tsv"  # what batch jobs could not finish
CACHE = f"{AGE}/cache/{{eid}}.npy"
# Per-participant rules run in batches: <stage>/batches/<rule>/<batch>.tsv lists each member's
# status; <stage>/batches/<rule>/done/<eid>.json is its record (ageatlas.core.batch_run).
AGE_MODEL = f"{AGE}/model"  # checkpoint.pt, metrics.tsv, state.pt
TABLE1 = f"{AGE}/table1.md"
GRADCAM = f"{EXPLAIN}/gradcam/{{eid}}.nii.gz"  # test participants, stitched space
ATLAS = f"{EXPLAIN}/atlas"  # {group}.nii.gz, {group}/iter{i}/...
REGISTRATION_QC = f"{EXPLAIN}/registration_qc.tsv"
TRUTH_CHECK = f"{EXPLAIN}/truth_check.tsv"  # SYNTHETIC cohorts only


def eid_of_path(path) -> str:
    """The eid a per-participant file is named after ({eid}.nii.gz, {eid}.json, ...)."""
    return str(path).rsplit("/", 1)[-1].split(".", 1)[0]


def stitched_path(stitched_dir: str | Path, eid: str, contrast: str) -> Path:
    """A stitched contrast (W, F, in, opp) inside a participant's ingest folder."""
    return Path(stitched_dir) / f"{eid}_{contrast}.nii.gz"


def channel_files(path: str, channels) -> list[str]:
    """An atlas's or template's files, one per registration channel: ``path`` for the first
    (the one figures show) and ``{stem}_{contrast}.nii.gz`` beside it for each further one."""
    path = str(path)
    if not path.endswith(".nii.gz"):
        raise ValueError(f"an atlas image is a .nii.gz file, got {path}")
    return [path] + [f"{path[: -len('.nii.gz')]}_{c}.nii.gz" for c in list(channels)[1:]]
