"""SYNTHETIC cohort: registration Dice, importance enrichment in the planted age regions and its
resolution ceiling, one group."""

import json
import logging
from pathlib import Path

import nibabel as nib

from ageatlas.core import logs
from ageatlas.core.batch_run import failures
from ageatlas.explain.register import RegistrationFailed, load_outcome
from ageatlas.explain.truth import group_check, method_ceiling
from ageatlas.synthetic.phantom import AGE_LABELS, REGION_LABELS

logs.to_file(snakemake.log[0])
settings, factor = snakemake.params.gradcam, snakemake.params.downsample


# Participants their batches could not finish have no map to check.
unfinished = failures([snakemake.input.warp, snakemake.input.registration])


def participants():
    params = snakemake.params
    for transform, gradcam, stitched in zip(
        params.transforms, params.gradcam_maps, params.stitched
    ):
        eid = Path(stitched).name
        if eid in unfinished:
            logging.warning("participant %s left out: %s", eid, unfinished[eid])
            continue
        labels = nib.load(Path(snakemake.input.labels) / f"{eid}_regions.nii.gz")
        try:
            registration = load_outcome(transform)
        except RegistrationFailed as not_registered:
            logging.warning("%s", not_registered)
            registration = None
        yield eid, registration, labels, nib.load(gradcam)


def ceiling(mask):
    return method_ceiling(mask, factor, settings)


result = group_check(
    participants(),
    nib.load(snakemake.input.atlas),
    nib.load(snakemake.input.mean),
    AGE_LABELS,
    n_labels=max(REGION_LABELS) + 1,
    ceiling=ceiling,
    per_year=nib.load(snakemake.input.per_year),
    per_year_of_age=nib.load(snakemake.input.per_year_of_age),
    fwhm_mm=snakemake.params.fwhm_mm,
)
method = {k: settings[k] for k in ("method", "layer", "placement", "target")}
result = {"group": snakemake.wildcards.group, **method, **result}
with open(snakemake.output[0], "w") as out:
    json.dump(result, out, indent=2)
logging.info("%s", result)
