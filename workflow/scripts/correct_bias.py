"""Fit the age-bias correction on the validation set; apply it to all predictions."""

import logging

from ageatlas.cohort import read_participant_tsv
from ageatlas import bias, logs, provenance

logs.to_file(snakemake.log[0])
predictions = read_participant_tsv(snakemake.input[0])
correction = bias.fit_table(predictions, method=snakemake.params.method)
correction.to_json(snakemake.output.coefficients)
bias.correct_table(predictions, correction).to_csv(
    snakemake.output.predictions, sep="\t", index=False
)
logging.info("bias correction: %s", correction)
provenance.record(snakemake)
