"""SYNTHETIC cohort: the per-group truth checks in one table."""

import json

import pandas as pd

from ageatlas.core import logs, provenance

logs.to_file(snakemake.log[0])
rows = [json.loads(open(p).read()) for p in snakemake.input]
for row in rows:
    row["failed_registrations"] = len(row["failed_registrations"])
    row["empty_maps"] = len(row.get("empty_maps", []))
pd.DataFrame(rows).to_csv(snakemake.output[0], sep="\t", index=False, float_format="%.3f")
provenance.record(snakemake)
