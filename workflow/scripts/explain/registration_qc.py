"""One table of every test participant's registration QC (explain/registration_qc.tsv)."""

from ageatlas.core import logs, provenance
from ageatlas.explain.registration_qc import registration_table

logs.to_file(snakemake.log[0])
registration_table(snakemake.input).to_csv(snakemake.output[0], sep="\t", index=False)
provenance.record(snakemake)
