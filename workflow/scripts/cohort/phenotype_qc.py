"""Validate the phenotype table against the zips present; one QC row per problem."""

import logging

from ageatlas.cohort import phenotypes
from ageatlas.cohort import table as cohort
from ageatlas.core import logs, provenance, qc

logs.to_file(snakemake.log[0])
p = snakemake.params
found = cohort.discover(
    snakemake.input.phenotypes,
    p.zip_dir,
    phenotypes.load_schema(snakemake.input.schema),
    p.columns,
    p.instance,
)
qc.records_frame(found.records).to_csv(snakemake.output[0], sep="\t", index=False)
logging.info(
    "%d participants with valid phenotypes and a zip; %d QC records",
    len(found.participants),
    len(found.records),
)
provenance.record(snakemake)
