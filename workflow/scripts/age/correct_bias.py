"""Correct the age bias of all predictions: with the given coefficients (bias.coefficients), or
with a correction fitted on the validation set."""

import logging

from ageatlas.age import bias
from ageatlas.cohort.table import read_participant_tsv
from ageatlas.core import logs, provenance

logs.to_file(snakemake.log[0])
predictions = read_participant_tsv(snakemake.input[0])
# The 2.5D baseline's rule (use rule ... with) names no coefficients input.
correction, source = bias.given_or_fitted(
    predictions,
    method=snakemake.params.method,
    given=snakemake.input.get("coefficients") or None,
)
correction.to_json(snakemake.output.coefficients)
bias.correct_table(predictions, correction).to_csv(
    snakemake.output.predictions, sep="\t", index=False
)
logging.info("bias correction (%s): %s", source["source"], correction)
if source["source"] == "given":
    ages = predictions["age"]
    if ages.min() < correction.age_min or ages.max() > correction.age_max:
        logging.warning(
            "the given correction was fitted on ages %.1f to %.1f; this cohort's run from %.1f "
            "to %.1f: outside that range it extrapolates",
            correction.age_min,
            correction.age_max,
            ages.min(),
            ages.max(),
        )
if not correction.tracks_age:
    logging.warning(
        "the validation predictions rise only %.2f years per year of age: the model has not "
        "learned age, so its corrected predictions mostly return chronological age (Table 1 marks "
        "them)",
        correction.age_slope,
    )
provenance.record(snakemake, bias_correction=source)
