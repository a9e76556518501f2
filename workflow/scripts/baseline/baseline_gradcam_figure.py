"""Figure 9: Grad-CAM of the 2.5D baseline over the projections of the participants given as
input."""

import logging
from pathlib import Path

from ageatlas.baseline.model import gradcam_figure
from ageatlas.cohort.table import read_participant_tsv
from ageatlas.core import logs
from ageatlas.core.batch_run import finished

logs.to_file(snakemake.log[0])
cohort = read_participant_tsv(snakemake.input.cohort)
ages = dict(zip(cohort["eid"], cohort["age"].astype(float)))
projections = finished(snakemake.params.projections, snakemake.input.projections)
items = [(Path(path).stem, str(path)) for path in projections]
rows = gradcam_figure(snakemake.input.checkpoint, items, snakemake.output.figure, ages=ages)
for row in rows:
    logging.info(
        "participant %s: age %.1f, predicted %.1f", row["eid"], ages[row["eid"]], row["predicted"]
    )
