"""One row per participant that a batch job could not finish, with its error and log."""

import logging

from ageatlas.core import logs, provenance
from ageatlas.core.batch_run import failure_table

logs.to_file(snakemake.log[0])
table = failure_table(snakemake.input)
table.to_csv(snakemake.output[0], sep="\t", index=False)
logging.info("%d participant-steps failed in %d batches", len(table), len(snakemake.input))
provenance.record(snakemake)
