"""A group's last template (one file per registration channel) under the atlas's stable name,
with its provenance sidecar."""

import shutil

from ageatlas.core import logs, provenance

logs.to_file(snakemake.log[0])
for source, target in zip(snakemake.input, snakemake.output):
    shutil.copyfile(source, target)
provenance.record(snakemake)
