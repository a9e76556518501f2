"""Attribution map of one test participant, saved with its stitched image's affine."""

import logging

from ageatlas.cohort.table import read_participant_tsv
from ageatlas.core import logs, provenance
from ageatlas.core.paths import stitched_path
from ageatlas.explain.gradcam import cam_for_participant

logs.to_file(snakemake.log[0])
eid = snakemake.wildcards.eid
settings = snakemake.params.gradcam
cohort = read_participant_tsv(snakemake.input.cohort)
# The deviation target's reference: the training mean age (the output bias's start).
reference_age = float(cohort.loc[cohort["split"] == "train", "age"].mean())
normalise = settings["normalise"]
info = cam_for_participant(
    snakemake.input.checkpoint,
    snakemake.input.cache,
    stitched_path(snakemake.input.stitched, eid, "W"),
    snakemake.output[0],
    layer_name=settings["layer"],
    method=settings["method"],
    placement=settings["placement"],
    normalise=settings["method"] == "gradcam" if normalise is None else normalise,
    target=settings["target"],
    reference_age=reference_age,
    reference_path=snakemake.input.reference or None,
    steps=settings["steps"],
    block=settings["block"],
    downsample_factor=snakemake.params.downsample,
)
logging.info("participant %s: %s", eid, info)
provenance.record(snakemake)
