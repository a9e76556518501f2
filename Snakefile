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
include: "workflow/rules/cohort.smk"
include: "workflow/rules/age.smk"
include: "workflow/rules/baseline.smk"
include: "workflow/rules/explain_gradcam.smk"
include: "workflow/rules/explain_atlas.smk"
include: "workflow/rules/explain_register.smk"
include: "workflow/rules/explain_maps.smk"


# Small cohort-level rules run in the main Snakemake process, not as cluster
# jobs: each takes seconds to a minute and little memory, far less than a
# SLURM job's queueing and start-up (docs/design.md, "Batches").
localrules:
    all,
    phenotype_qc,
    qc_table,
    cohort_table,
    participant_failures,
    correct_bias,
    correct_bias_baseline,
    table1,
    age_figures,
    ageing_classes,
    registration_qc,
    atlas_init,
    atlas,
    group_figures,
    importance_figure,
    examples_figure,
    truth_summary,


rule all:
    default_target: True
    input:
        qc_table=PARTICIPANT_QC,
        failures=PARTICIPANT_FAILURES,
        table1=f"{AGE}/table1.md",
        figures=f"{AGE}/figures/predicted_vs_age_by_group.png",
        baseline_figure=if_baseline(f"{BASELINE}/figures/gradcam_projections.png"),
        explain=explain_targets,
