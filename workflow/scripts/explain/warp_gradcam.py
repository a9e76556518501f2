"""Warp one participant's Grad-CAM map into its group atlas with its registration."""

import logging

import nibabel as nib
import numpy as np

from ageatlas.core import logs, provenance
from ageatlas.explain.maps import nan_map
from ageatlas.explain.register import RegistrationFailed, load_outcome

logs.to_file(snakemake.log[0])
try:
    # NaN where atlas space lies outside this participant's field of view: the population mean
    # and SD leave those voxels out instead of averaging in zeros.
    warped = load_outcome(snakemake.input.transform).warp(
        nib.load(snakemake.input.gradcam), order=1, mark_outside=True
    )
    covered = ~np.isnan(np.asanyarray(warped.dataobj))
    logging.info(
        "warped %s; %.1f%% of atlas voxels covered", snakemake.input.gradcam, 100 * covered.mean()
    )
except RegistrationFailed as failed:
    # The population rules leave this participant out (registration record);
    # NaN makes any accidental average visibly wrong instead of quietly biased.
    warped = nan_map(nib.load(snakemake.input.atlas), "registration failed: not a map")
    logging.warning("%s", failed)
nib.save(warped, snakemake.output[0])
provenance.record(snakemake)
