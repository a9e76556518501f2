"""Iteration-0 template of one group's atlas: its reference participant's image of each
registration channel (water first)."""

import logging

import nibabel as nib

from ageatlas.core import logs, provenance
from ageatlas.core.paths import stitched_path
from ageatlas.explain.atlas import initial_template

logs.to_file(snakemake.log[0])
stitched, params = snakemake.params.stitched, snakemake.params
eid = stitched.rstrip("/").split("/")[-1]
for channel, out in zip(params.channels, snakemake.output):
    image = stitched_path(stitched, eid, channel)
    nib.save(initial_template(nib.load(image), params.clip), out)
    logging.info("group %s: reference %s", snakemake.wildcards.group, image)
provenance.record(snakemake)
