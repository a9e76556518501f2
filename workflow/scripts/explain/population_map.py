"""Population maps of one group's warped attribution maps over one subset (all, an age band, an
ageing class): mean and SD of the importance |map|, means of the signed parts, coverage count,
and the signed map's slopes on the predicted age (the model's raw output, which the maps explain)
and on the chronological age."""

import json
import logging

import nibabel as nib
import pandas as pd

from ageatlas.core import logs, provenance
from ageatlas.core.batch_run import failures
from ageatlas.explain.maps import eid_of_path, mean_map, nan_map, subset_eids, usable_maps

logs.to_file(snakemake.log[0])
group, subset = snakemake.wildcards.group, snakemake.wildcards.subset
classes = pd.read_csv(snakemake.input.classes, sep="\t", dtype={"eid": str})
eids = subset_eids(classes, group, subset)
# Inputs are the batch manifests; the per-participant files come as params.
failed = failures([snakemake.input.warp, snakemake.input.registration])
paths, excluded = usable_maps(eids, snakemake.params.warped, snakemake.params.records, failed)
names = ("mean", "sd", "positive", "negative", "count", "per_year", "per_year_of_age")
if paths:
    predictions = pd.read_csv(snakemake.input.predictions, sep="\t", dtype={"eid": str})
    by_eid = predictions.set_index("eid")
    eids = [eid_of_path(p) for p in paths]
    maps = mean_map(
        paths,
        predicted=by_eid.loc[eids, "predicted"].to_numpy(),
        age=by_eid.loc[eids, "age"].to_numpy(),
        fwhm_mm=snakemake.params.fwhm_mm,
    )
    images, n = {name: getattr(maps, name) for name in names}, maps.n
else:
    # An empty subset still gets its files (targets must exist): NaN, n=0 in the record.
    empty = nan_map(nib.load(snakemake.input.atlas), f"ageatlas {subset} n=0")
    images, n = dict.fromkeys(names, empty), 0
for name, image in images.items():
    # "count" is reserved in Snakemake: the rule calls that output "coverage".
    nib.save(image, getattr(snakemake.output, "coverage" if name == "count" else name))
record = {
    "group": group,
    "subset": subset,
    "n": n,
    "eids": [eid_of_path(p) for p in paths],
    "excluded": excluded,
}
with open(snakemake.output.members, "w") as out:
    json.dump(record, out, indent=2)
logging.info("%s %s: n=%d, %d excluded", group, subset, n, len(excluded))
provenance.record(snakemake)
