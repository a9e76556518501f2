"""Zip -> stitched NIfTI for one participant; data defects end in qc.json, not a failure."""

from ageatlas.core import logs
from ageatlas.ingest.participant import ingest_participant, settings_from_config

logs.to_file(snakemake.log[0])
grid, options, preview = settings_from_config(snakemake.params.stitch)
ingest_participant(
    snakemake.wildcards.eid,
    snakemake.input.zip,
    snakemake.output[0],
    grid,
    options,
    preview=preview,
)
