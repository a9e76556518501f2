"""One group's figures: maps by age band and by ageing class (paper Figures 3, 5) and the class
test."""

import json

import nibabel as nib

from ageatlas.core import logs
from ageatlas.explain.figures import class_test_panels, importance_panels

logs.to_file(snakemake.log[0])
group, threshold = snakemake.wildcards.group, snakemake.params.threshold
atlas = nib.load(snakemake.input.atlas)
counts = {}
for path in snakemake.input.members:
    record = json.loads(open(path).read())
    counts[record["subset"]] = record["n"]


def panels(paths, output, what):
    subsets = [p.rsplit("/", 1)[-1].removesuffix("_mean.nii.gz") for p in paths]
    maps = [nib.load(p) if counts[s] else None for p, s in zip(paths, subsets)]
    labels = [f"{s.split('-', 1)[1]} (n={counts[s]})" for s in subsets]
    importance_panels(
        [atlas] * len(maps),
        maps,
        labels,
        output,
        threshold=threshold,
        title=f"{group}: mean importance by {what}",
    )


panels(snakemake.input.bands, snakemake.output.bands, "age band")
panels(snakemake.input.classes, snakemake.output.classes, "ageing class")
summary = json.loads(open(snakemake.input.summary).read())
if summary["tested"]:
    title = (
        f"{group}: accelerated (n={summary['n_accelerated']}) "
        f"vs decelerated (n={summary['n_decelerated']}), "
        f"{summary['n_significant']} voxels p<{summary['alpha']} FWE"
    )
else:
    title = f"{group}: not tested - {summary['reason']}"
class_test_panels(
    atlas,
    nib.load(snakemake.input.t),
    nib.load(snakemake.input.significant),
    snakemake.output.test,
    title=title,
)
