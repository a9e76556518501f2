"""A trained 3D model given in the config (model.checkpoint): checked, then copied into the run.

The copy takes train_age_model's place (age/model/checkpoint.pt), so that prediction
and every attribution job read the model as they would a trained one, and records
beside it the given file's path and SHA-256 (ageatlas.core.provenance).
"""

import logging

from ageatlas.age.train import load_checkpoint
from ageatlas.core import logs, provenance

logs.to_file(snakemake.log[0])
given = snakemake.input.given
# The 3D model's config and weights, or a ValueError naming the file and what differs.
_, config, meta = load_checkpoint(given, "cpu")
record = provenance.install_checkpoint(given, snakemake.output.checkpoint)
logging.info(
    "given checkpoint %s (sha256 %s; epoch %s, validation MAE %s, input shape %s, hidden %d) "
    "copied to %s",
    given,
    record["sha256"],
    meta.get("epoch"),
    meta.get("val_mae"),
    meta.get("input_shape"),
    config.hidden,
    snakemake.output.checkpoint,
)
