"""Cohort table of the participants that passed QC, with a balanced split."""

import logging

from ageatlas.cohort import phenotypes
from ageatlas.cohort import table as cohort
from ageatlas.core import logs, provenance

logs.to_file(snakemake.log[0])
p = snakemake.params
participants = cohort.passed_participants(
    snakemake.input.phenotypes,
    phenotypes.load_schema(snakemake.input.schema),
    p.columns,
    snakemake.input.qc,
)
table = cohort.cohort_table(
    participants,
    p.split["sizes"],
    p.seed,
    tuple(p.split["bmi_cutoffs"]),
    tuple(p.split["age_edges"]),
)
for note in table.attrs.get("notes", []):
    logging.warning("%s", note)
table.to_csv(snakemake.output.table, sep="\t", index=False)
logging.info(
    "cohort of %d: %s",
    len(table),
    table.groupby(["split", "group"]).size().unstack(fill_value=0).to_string(),
)
provenance.record(snakemake)
