"""The mean training input: the reference volume of integrated gradients and occlusion."""

import logging

from ageatlas.core import logs, provenance
from ageatlas.core.batch_run import finished
from ageatlas.core.files import save_npy
from ageatlas.explain.reference_attribution import reference_volume

logs.to_file(snakemake.log[0])
paths = finished(snakemake.params.caches, snakemake.input.caches)
save_npy(snakemake.output[0], reference_volume(paths))
logging.info("mean of %d training inputs written to %s", len(paths), snakemake.output[0])
provenance.record(snakemake)
