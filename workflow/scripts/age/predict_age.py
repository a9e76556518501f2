"""Predict the validation and test participants in one batched job (3D model or 2.5D baseline)."""

import json
from pathlib import Path

from ageatlas.age.predict import predict
from ageatlas.baseline import model as baseline
from ageatlas.cohort.table import read_participant_tsv
from ageatlas.core import logs, provenance
from ageatlas.core.batch_run import finished

logs.to_file(snakemake.log[0])
cohort = read_participant_tsv(snakemake.input.cohort)
# Inputs are batch manifests: participants whose batch could not finish them are left out.
caches = finished(snakemake.params.caches, snakemake.input.caches)
items = [(Path(path).stem, str(path)) for path in caches]
# The 2.5D baseline's rule (use rule ... with) says family "2.5d".
config_type = baseline.config_type(snakemake.params.get("family"))
predicted, timing = predict(
    snakemake.input.checkpoint,
    items,
    batch_size=snakemake.params.batch_size,
    config_type=config_type,
)
table = cohort[["eid", "split", "age"]].merge(predicted, on="eid", validate="one_to_one")
table.to_csv(snakemake.output.predictions, sep="\t", index=False)
Path(snakemake.output.timing).write_text(json.dumps(timing, indent=2) + "\n")
provenance.record(snakemake)
