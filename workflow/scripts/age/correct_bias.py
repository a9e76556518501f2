"""Fit the age-bias correction on the validation set; apply it to all predictions."""

import logging

from ageatlas.age import bias
from ageatlas.cohort.table import read_participant_tsv
from ageatlas.core import logs, provenance

logs.to_file(snakemake.log[0])
predictions = read_participant_tsv(snakemake.input[0])
correction = bias.fit_table(predictions, method=snakemake.params.method)
correction.to_json(snakemake.output.coefficients)
bias.correct_table(predictions, correction).to_csv(
    snakemake.output.predictions, sep="\t", index=False
)
logging.info("bias correction: %s", correction)
if not correction.tracks_age:
    logging.warning(
        "the validation predictions rise only %.2f years per year of age: the model has not "
        "learned age, so its corrected predictions mostly return chronological age (Table 1 marks "
        "them)",
        correction.age_slope,
    )
provenance.record(snakemake)
