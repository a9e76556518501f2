"""SYNTHETIC cohort: registration Dice and importance enrichment in the planted age regions, one
group."""

import json
import logging
from pathlib import Path

import nibabel as nib

from ageatlas.core import logs
from ageatlas.core.paths import stitched_path
from ageatlas.explain.register import RegistrationFailed, load_outcome
from ageatlas.explain.truth import group_check, labels_on
from ageatlas.synthetic.phantom import AGE_REGIONS, REGION_LABELS

logs.to_file(snakemake.log[0])
age_labels = [v for v, name in REGION_LABELS.items() if name in AGE_REGIONS]


def participants():
    for transform, gradcam, stitched in zip(
        snakemake.input.transforms, snakemake.input.gradcam, snakemake.input.stitched
    ):
        eid = Path(stitched).name
        water = nib.load(stitched_path(stitched, eid, "W"))
        labels = labels_on(water, nib.load(Path(snakemake.input.labels) / f"{eid}_regions.nii.gz"))
        try:
            registration = load_outcome(transform)
        except RegistrationFailed as failed:
            logging.warning("%s", failed)
            registration = None
        yield eid, registration, labels, nib.load(gradcam)


result = group_check(
    participants(),
    nib.load(snakemake.input.atlas),
    nib.load(snakemake.input.mean),
    age_labels,
    n_labels=max(REGION_LABELS) + 1,
)
result = {"group": snakemake.wildcards.group, **result}
with open(snakemake.output[0], "w") as out:
    json.dump(result, out, indent=2)
logging.info("%s", result)
