"""Stitched water and fat of one participant -> its 2.5D projections (.npy) and a PNG preview."""

import logging

from ageatlas.baseline.projection import ProjectionOptions, project_participant
from ageatlas.core import logs

logs.to_file(snakemake.log[0])
info = project_participant(
    snakemake.input[0],
    snakemake.wildcards.eid,
    snakemake.output.projection,
    snakemake.output.preview,
    ProjectionOptions.from_config(snakemake.params.projection),
)
logging.info("participant %s: %s", snakemake.wildcards.eid, info)
