# The cohort stage: phenotype QC, the participant QC table (one row per
# participant known from the phenotype table or the zip folder, with its
# status and reasons), and the cohort table (groups, age bands, split).


rule phenotype_qc:
    input:
        phenotypes=PHENOTYPES,
        schema=PHENOTYPE_SCHEMA,
        zips=[participant_zip(eid) for eid in EIDS] if ZIP_INPUTS else [],
    output:
        report(
            PHENOTYPE_QC,
            caption="../report/qc_phenotypes.rst",
            category="Quality control",
        ),
    log:
        f"{LOGS}/phenotype_qc.log",
    conda:
        "../../envs/ageatlas.yaml"
    threads: 1
    resources:
        mem_mb=memory(2000),
        runtime=grows(10),
    params:
        columns=config["phenotypes"]["columns"],
        zip_dir=lambda wc, input: (
            os.path.dirname(input.zips[0]) if input.zips else ZIP_DIR
        ),
        zip_listing=ZIP_LISTING,
        instance=INSTANCE,
    script:
        "../scripts/cohort/phenotype_qc.py"


# Not a checkpoint: only cohort_table, built from it, is one. Two chained
# checkpoints let Snakemake 9.27.1 run a dependent job with unresolved
# (<TBD>) inputs when the first reruns and leaves the second up to date
# (tests/workflow/test_conventions.py).
rule qc_table:
    input:
        # A path, not rules.phenotype_qc.output: that makes Snakemake hash the
        # whole input list once per participant (quadratic DAG build).
        phenotypes=PHENOTYPE_QC,
        stitched=expand(STITCH_MANIFEST, batch=list(STITCH_BATCHES)),
    output:
        table=report(
            PARTICIPANT_QC,
            caption="../report/qc_participants.rst",
            category="Quality control",
        ),
    log:
        f"{LOGS}/qc_table.log",
    conda:
        "../../envs/ageatlas.yaml"
    threads: 1
    resources:
        mem_mb=memory(2000),
        runtime=grows(10),
    params:
        # Each participant's folder: the stitch batches' outputs are their manifests.
        stitched=stitched_dirs(),
        max_excluded_fraction=config["qc"]["max_excluded_fraction"],
    script:
        "../scripts/cohort/qc_table.py"


# Participants that a batch job could not finish (an error outside the QC
# checks, a killed worker): one row each, with the error and the log to read.
# The runs that need them leave them out; this table says so.
rule participant_failures:
    input:
        all_batch_manifests,
    output:
        report(
            PARTICIPANT_FAILURES,
            caption="../report/participant_failures.rst",
            category="Quality control",
        ),
    log:
        f"{LOGS}/participant_failures.log",
    conda:
        "../../envs/ageatlas.yaml"
    threads: 1
    resources:
        mem_mb=memory(1000),
        runtime=grows(5),
    script:
        "../scripts/cohort/participant_failures.py"


# A checkpoint: the split decides which caches training and prediction need.
checkpoint cohort_table:
    input:
        qc=PARTICIPANT_QC,
        phenotypes=PHENOTYPES,
        schema=PHENOTYPE_SCHEMA,
    output:
        table=report(COHORT_TABLE, caption="../report/cohort.rst", category="Age model"),
    log:
        f"{LOGS}/cohort_table.log",
    conda:
        "../../envs/ageatlas.yaml"
    threads: 1
    resources:
        mem_mb=memory(2000),
        runtime=grows(10),
    params:
        columns=config["phenotypes"]["columns"],
        split=config["split"],
        seed=config["seed"],
    script:
        "../scripts/cohort/cohort_table.py"
