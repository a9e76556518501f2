"""Voxel-wise test of two sets of one group's maps (max-t FWE), with confounds.

Used by two rules: ``class_test`` (accelerated vs decelerated, confounds age
and BMI) and ``age_band_test`` (lt60 vs ge70, confound BMI). The contrast
comes in ``params.contrast``: column, levels, confounds.
"""

import json
import logging

import nibabel as nib
import numpy as np
import pandas as pd

from ageatlas.core import logs, provenance
from ageatlas.core.batch_run import failures
from ageatlas.explain.maps import nan_map
from ageatlas.explain.stats import group_contrast

logs.to_file(snakemake.log[0])
maps, contrast = snakemake.params.maps, snakemake.params.contrast
table = pd.read_csv(snakemake.input.classes, sep="\t", dtype={"eid": str})
result, summary = group_contrast(
    table,
    snakemake.wildcards.group,
    contrast["column"],
    tuple(contrast["levels"]),
    snakemake.params.warped,
    snakemake.params.records,
    confounds=contrast["confounds"],
    failed=failures([snakemake.input.warp, snakemake.input.registration]),
    n_perm=maps["n_perm"],
    seed=snakemake.params.seed,
    tfce=maps["tfce"],
    alpha=maps["alpha"],
    fwhm_mm=maps["fwhm_mm"],
    n_jobs=snakemake.threads,
)
if result is not None:
    images = {"t": result["t"], "logp": result["logp_fwe"], "significant": result["significant"]}
else:
    # Not tested: the summary says why; the maps are NaN (t, logp) and empty (significant).
    reference = nib.load(snakemake.input.atlas)
    images = {
        "t": nan_map(reference, "not tested"),
        "logp": nan_map(reference, "not tested"),
        "significant": nib.Nifti1Image(np.zeros(reference.shape[:3], np.uint8), reference.affine),
    }
for key, image in images.items():
    nib.save(image, snakemake.output[key])
with open(snakemake.output.summary, "w") as out:
    json.dump(summary, out, indent=2)
logging.info("%s", summary)
provenance.record(snakemake)
