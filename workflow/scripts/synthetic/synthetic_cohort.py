"""Write the embedded SYNTHETIC cohort in the real field-20201 layout."""

from pathlib import Path

from ageatlas.core import logs, provenance
from ageatlas.synthetic.cohort_writer import write_cohort
from ageatlas.synthetic.participants import make_cohort

logs.to_file(snakemake.log[0])
participants = make_cohort(
    snakemake.params.n,
    seed=snakemake.params.seed,
    offset_sd=snakemake.params.offset_sd,
    age_effect_scale=snakemake.params.age_effect_scale,
    position_sd_mm=snakemake.params.position_sd_mm,
)
write_cohort(
    Path(snakemake.output.phenotypes).parent,
    participants,
    scale=snakemake.params.scale,
    defects_by_eid={int(k): v for k, v in snakemake.params.defects.items()},
    seed=snakemake.params.seed,
    workers=snakemake.threads,
)
provenance.record(snakemake)
