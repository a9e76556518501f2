"""The mean training input: the reference volume of integrated gradients and occlusion."""

import logging

import numpy as np

from ageatlas.core import logs, provenance
from ageatlas.core.files import load_npy, save_npy
from ageatlas.explain.reference_attribution import mean_volume

logs.to_file(snakemake.log[0])
paths = list(snakemake.input)
# A cache's NaN background is drawn N(0, 1) at every read: its expected value, 0, is the mean.
volumes = (np.nan_to_num(load_npy(p), nan=0.0) for p in paths)
save_npy(snakemake.output[0], mean_volume(volumes))
logging.info("mean of %d training inputs written to %s", len(paths), snakemake.output[0])
provenance.record(snakemake)
