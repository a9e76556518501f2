"""Mean importance map of every sex x BMI group over its atlas (paper Figures 2 and 6)."""

import json

import nibabel as nib

from ageatlas.core import logs
from ageatlas.explain.figures import importance_panels

logs.to_file(snakemake.log[0])
counts = [json.loads(open(p).read())["n"] for p in snakemake.input.members]
importance_panels(
    [nib.load(p) for p in snakemake.input.atlases],
    [nib.load(p) if n else None for p, n in zip(snakemake.input.maps, counts)],
    [f"{p.split('/')[-3]} (n={n})" for p, n in zip(snakemake.input.maps, counts)],
    snakemake.output[0],
    threshold=snakemake.params.threshold,
    title="Population-wide importance |map| per sex x BMI group",
)
