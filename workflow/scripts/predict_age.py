"""Predict the validation and test participants in one batched job."""

import json
from pathlib import Path

from ageatlas.cohort import read_participant_tsv
from ageatlas import logs
from ageatlas.predict import predict

logs.to_file(snakemake.log[0])
cohort = read_participant_tsv(snakemake.input.cohort)
items = [(Path(path).stem, str(path)) for path in snakemake.input.caches]
predicted, timing = predict(snakemake.input.checkpoint, items, batch_size=snakemake.params.batch_size)
table = cohort[["eid", "split", "age"]].merge(predicted, on="eid", validate="one_to_one")
table.to_csv(snakemake.output.predictions, sep="\t", index=False)
Path(snakemake.output.timing).write_text(json.dumps(timing, indent=2) + "\n")
