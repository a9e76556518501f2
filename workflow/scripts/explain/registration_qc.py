"""One table of every test participant's registration QC (qc/registration.tsv)."""

from ageatlas.core import logs, provenance
from ageatlas.core.qc import registration_table

logs.to_file(snakemake.log[0])
registration_table(snakemake.input).to_csv(snakemake.output[0], sep="\t", index=False)
provenance.record(snakemake)
