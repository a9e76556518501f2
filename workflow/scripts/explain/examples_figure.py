"""Individual warped maps of one group: near-perfect, accelerated, decelerated (paper Figure 4)."""

import nibabel as nib
import pandas as pd

from ageatlas.core import logs
from ageatlas.core.batch_run import failures
from ageatlas.explain.figures import examples_panels
from ageatlas.explain.maps import eid_of_path, usable_maps

logs.to_file(snakemake.log[0])
group, k = snakemake.params.group, snakemake.params.per_class
table = pd.read_csv(snakemake.input.classes, sep="\t", dtype={"eid": str})
table = table[table["group"] == group]
failed = failures([snakemake.input.warp, snakemake.input.registration])
used, _ = usable_maps(table["eid"], snakemake.params.warped, snakemake.params.records, failed)
path_of = {eid_of_path(p): p for p in used}
table = table[table["eid"].isin(path_of)]
picks = {
    "near-perfect": table[table["near_perfect"]]
    .assign(key=lambda t: t["gap"].abs())
    .nsmallest(k, "key"),
    "accelerated": table[table["ageing_class"] == "accelerated"].nlargest(k, "gap"),
    "decelerated": table[table["ageing_class"] == "decelerated"].nsmallest(k, "gap"),
}
rows = {
    label: [
        (f"{r.eid}: age {r.age:.0f}, gap {r.gap:+.1f}", nib.load(path_of[r.eid]))
        for r in rows.itertuples()
    ]
    for label, rows in picks.items()
}
examples_panels(
    nib.load(snakemake.input.atlas),
    rows,
    snakemake.output[0],
    threshold=snakemake.params.threshold,
    title=f"{group}: individual importance maps in atlas space",
)
