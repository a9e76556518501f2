"""Merge phenotype and ingest QC into one row per participant."""

import logging

from ageatlas.cohort.qc_table import check_excluded_fraction, ingest_records, participant_table
from ageatlas.core import logs, provenance, qc
from ageatlas.ingest.participant import QC_FILE, STAGE

logs.to_file(snakemake.log[0])
records = qc.read_records_tsv(snakemake.input.phenotypes)
ingest = ingest_records(snakemake.params.stitched, snakemake.input.stitched, STAGE, QC_FILE)
table = participant_table(records + ingest)
table.to_csv(snakemake.output.table, sep="\t", index=False)
logging.info("QC: %s", table["status"].value_counts().to_dict())
check_excluded_fraction(ingest, STAGE, snakemake.params.max_excluded_fraction)
provenance.record(snakemake)
