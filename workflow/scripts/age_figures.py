"""Predicted against chronological age (the paper's Figures 7 and 8)."""

import pandas as pd

from ageatlas import figures, logs

logs.to_file(snakemake.log[0])
cohort = pd.read_csv(snakemake.input.cohort, sep="\t", dtype={"eid": str})
predictions = pd.read_csv(snakemake.input.predictions, sep="\t", dtype={"eid": str})
test = predictions[predictions["split"] == "test"].merge(cohort[["eid", "sex", "bmi_group"]], on="eid")
figures.scatter_before_after(test, snakemake.output.before_after)
figures.scatter_by_group(test, snakemake.output.by_group)
