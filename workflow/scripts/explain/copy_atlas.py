"""A group's last template under the atlas's stable name, with its provenance sidecar."""

import shutil

from ageatlas.core import logs, provenance

logs.to_file(snakemake.log[0])
shutil.copyfile(snakemake.input[0], snakemake.output[0])
provenance.record(snakemake)
