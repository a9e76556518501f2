"""Predicted against chronological age (the paper's Figures 7 and 8)."""

from ageatlas.age import figures
from ageatlas.cohort.table import read_participant_tsv
from ageatlas.core import logs

logs.to_file(snakemake.log[0])
cohort = read_participant_tsv(snakemake.input.cohort)
predictions = read_participant_tsv(snakemake.input.predictions)
test = predictions[predictions["split"] == "test"].merge(
    cohort[["eid", "sex", "bmi_group"]], on="eid"
)
figures.scatter_before_after(test, snakemake.output.before_after)
figures.scatter_by_group(test, snakemake.output.by_group)
