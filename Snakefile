# ageatlas: age from whole-body MRI, and where in the body it shows.
# Usage: README.md. Data flow and conventions: docs/design.md.
from snakemake.utils import min_version, validate

min_version("9.0")


# The embedded synthetic cohort is the default; a real cohort comes with
# --configfile (merging both would mix a synthetic block into a real run).
if not config:

    configfile: "config/demo.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/synthetic.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/qc.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/baseline.smk"
include: "workflow/rules/explain.smk"


rule all:
    default_target: True
    input:
        qc_table=f"{RESULTS}/qc/participants.tsv",
        table1=f"{RESULTS}/age/table1.md",
        figures=f"{RESULTS}/age/figures/predicted_vs_age_by_group.png",
        baseline_figure=f"{BASELINE}/figures/gradcam_projections.png",
        explain=explain_targets,
