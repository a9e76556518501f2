"""One table of every test participant's registration QC (explain/registration_qc.tsv)."""

from ageatlas.core import logs, provenance
from ageatlas.core.batch_run import finished
from ageatlas.explain.registration_qc import registration_table

logs.to_file(snakemake.log[0])
# Participants whose batch could not register them are in the failure table instead.
registration_table(finished(snakemake.params.records, snakemake.input.registration)).to_csv(
    snakemake.output[0], sep="\t", index=False
)
provenance.record(snakemake)
