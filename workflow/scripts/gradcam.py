"""Grad-CAM map of one test participant, saved with its stitched image's affine."""

import logging

from ageatlas import logs
from ageatlas.gradcam import cam_for_participant
from ageatlas.ingest import stitched_path

logs.to_file(snakemake.log[0])
eid = snakemake.wildcards.eid
info = cam_for_participant(
    snakemake.input.checkpoint,
    snakemake.input.cache,
    stitched_path(snakemake.input.stitched, eid, "W"),
    snakemake.output[0],
    layer_name=snakemake.params.gradcam["layer"],
    normalise=snakemake.params.gradcam["normalise"],
    downsample_factor=snakemake.params.downsample,
)
logging.info("participant %s: %s", eid, info)
