"""Iteration-0 template of one group's atlas: its reference participant's water image."""

import logging

import nibabel as nib

from ageatlas.core import logs, provenance
from ageatlas.core.paths import stitched_path
from ageatlas.explain.atlas import initial_template

logs.to_file(snakemake.log[0])
stitched = snakemake.params.stitched
water = stitched_path(stitched, stitched.rstrip("/").split("/")[-1], "W")
nib.save(initial_template(nib.load(water), snakemake.params.clip), snakemake.output[0])
logging.info("group %s: reference %s", snakemake.wildcards.group, water)
provenance.record(snakemake)
