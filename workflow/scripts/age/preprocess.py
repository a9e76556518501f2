"""Stitched water -> normalised float16 training cache for one participant."""

import logging

from ageatlas.age import preprocess
from ageatlas.core import logs
from ageatlas.core.paths import stitched_path

logs.to_file(snakemake.log[0])
cfg = snakemake.params.preprocess
info = preprocess.prepare(
    stitched_path(snakemake.input[0], snakemake.wildcards.eid, "W"),
    snakemake.output[0],
    downsample_factor=cfg["downsample"],
    background=cfg["background"],
)
logging.info("participant %s: %s", snakemake.wildcards.eid, info)
