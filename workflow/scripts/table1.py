"""Table 1 of the paper: MAE by sex x BMI group, runtime rows from the rules' records."""

import json
import logging
from pathlib import Path

from ageatlas.cohort import read_participant_tsv
from ageatlas import evaluate, logs

logs.to_file(snakemake.log[0])
cohort = read_participant_tsv(snakemake.input.cohort)
predictions = read_participant_tsv(snakemake.input.predictions)
timing = json.loads(Path(snakemake.input.timing).read_text())
record = dict(
    training_samples=int((cohort["split"] == "train").sum()),
    epoch_seconds=evaluate.read_epoch_seconds(snakemake.input.metrics),
    inference_seconds_per_sample=timing["seconds_per_sample"],
)
methods = [
    evaluate.MethodResult("3D", predictions, column="predicted", **record),
    evaluate.MethodResult("3D (bias-corrected)", predictions, column="corrected", **record),
]
table = evaluate.table1(cohort, methods)
evaluate.write_table1(table, snakemake.output.tsv, snakemake.output.md)
for method in methods:
    scores = evaluate.overall_mae(cohort, method)
    logging.info(
        "%s: test MAE %.2f years against %.2f for the mean prediction (n=%d)",
        method.name,
        scores["mae"],
        scores["baseline_mae"],
        scores["n"],
    )
logging.info("Table 1\n%s", Path(snakemake.output.md).read_text())
