"""Voxel-wise test of accelerated against decelerated maps within one group (max-t FWE)."""

import json
import logging

import nibabel as nib
import numpy as np
import pandas as pd

from ageatlas.core import logs, provenance
from ageatlas.explain.maps import nan_map, subset_eids, usable_maps
from ageatlas.explain.stats import MIN_PER_CLASS, compare_classes

logs.to_file(snakemake.log[0])
group, maps = snakemake.wildcards.group, snakemake.params.maps
classes = pd.read_csv(snakemake.input.classes, sep="\t", dtype={"eid": str})
sets = {}
for name in ("accelerated", "decelerated"):
    eids = subset_eids(classes, group, f"ageing_class-{name}")
    sets[name], _ = usable_maps(eids, snakemake.input.warped, snakemake.input.records)
summary = {
    "group": group,
    "n_accelerated": len(sets["accelerated"]),
    "n_decelerated": len(sets["decelerated"]),
}
if min(map(len, sets.values())) >= MIN_PER_CLASS:
    result = compare_classes(
        sets["accelerated"],
        sets["decelerated"],
        n_perm=maps["n_perm"],
        seed=snakemake.params.seed,
        tfce=maps["tfce"],
        alpha=maps["alpha"],
        n_jobs=snakemake.threads,
    )
    images = {"t": result["t"], "logp": result["logp_fwe"], "significant": result["significant"]}
    summary.update(
        tested=True,
        n_perm=result["n_perm"],
        alpha=result["alpha"],
        n_significant=result["n_significant"],
    )
else:
    # Too few to test: say so; the maps are NaN (t, logp) and empty (significant).
    reference = nib.load(snakemake.input.warped[0])
    images = {
        "t": nan_map(reference, "not tested"),
        "logp": nan_map(reference, "not tested"),
        "significant": nib.Nifti1Image(np.zeros(reference.shape[:3], np.uint8), reference.affine),
    }
    summary.update(tested=False, reason=f"fewer than {MIN_PER_CLASS} participants in a class")
for key, image in images.items():
    nib.save(image, snakemake.output[key])
with open(snakemake.output.summary, "w") as out:
    json.dump(summary, out, indent=2)
logging.info("%s", summary)
provenance.record(snakemake)
