"""Table 1 of the paper: MAE by sex x BMI group of the 2.5D and 3D models, runtime rows from the
rules' records."""

import logging
from pathlib import Path

from ageatlas.age import evaluate
from ageatlas.cohort.table import read_participant_tsv
from ageatlas.core import logs, provenance

logs.to_file(snakemake.log[0])
cohort = read_participant_tsv(snakemake.input.cohort)
i = snakemake.input
given = snakemake.params.given_checkpoint  # None: the 3D model was trained here
# As in the paper: the 2.5D baseline (Langner et al.) first, then the 3D model; the baseline's
# inputs are empty when it is off (baseline.enabled).
methods = []
if i.baseline_predictions:
    methods += evaluate.model_columns(
        "2.5D",
        read_participant_tsv(i.baseline_predictions),
        i.baseline_metrics,
        i.baseline_timing,
        training_samples=cohort["split"].isin(snakemake.params.baseline_splits).sum(),
        correction_json=i.baseline_correction,
    )
methods += evaluate.model_columns(
    "3D",
    read_participant_tsv(i.predictions),
    i.metrics or None,
    i.timing,
    training_samples=(cohort["split"] == "train").sum(),
    correction_json=i.correction,
    given=given,
)
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
provenance.record(snakemake)
