# The cohort stage: phenotype QC, the participant QC table (one row per
# participant known from the phenotype table or the zip folder, with its
# status and reasons), and the cohort table (groups, age bands, split).


rule phenotype_qc:
    input:
        phenotypes=PHENOTYPES,
        schema=PHENOTYPE_SCHEMA,
        zips=[participant_zip(eid) for eid in EIDS],
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
        instance=INSTANCE,
    script:
        "../scripts/cohort/phenotype_qc.py"


# A checkpoint: later stages read it to use exactly the participants that
# passed QC.
checkpoint qc_table:
    input:
        # A path, not rules.phenotype_qc.output: that makes Snakemake hash the
        # whole input list once per participant (quadratic DAG build).
        phenotypes=PHENOTYPE_QC,
        stitched=stitched_dirs(),
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
        max_excluded_fraction=config["qc"]["max_excluded_fraction"],
    script:
        "../scripts/cohort/qc_table.py"


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
