"""Test participants' ageing class within their group, from the bias-corrected gap."""

from ageatlas.cohort.table import read_participant_tsv
from ageatlas.core import logs, provenance
from ageatlas.explain.maps import ageing_table

logs.to_file(snakemake.log[0])
maps = snakemake.params.maps
table = ageing_table(
    read_participant_tsv(snakemake.input.predictions),
    read_participant_tsv(snakemake.input.cohort),
    threshold=maps["ageing_threshold"],
    sd_multiple=maps["ageing_sd_multiple"],
    near_perfect_limit=maps["near_perfect_years"],
)
table.to_csv(snakemake.output[0], sep="\t", index=False)
provenance.record(snakemake)
