# The QC table: one row per participant known from the phenotype table or
# the zip folder, with its status (ok, warning, excluded) and reasons.


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
        mem_mb=2000,
        runtime=10,
    params:
        columns=config["phenotypes"]["columns"],
        zip_dir=lambda wc, input: (
            os.path.dirname(input.zips[0]) if input.zips else ZIP_DIR
        ),
        instance=INSTANCE,
    script:
        "../scripts/phenotype_qc.py"


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
            f"{RESULTS}/qc/participants.tsv",
            caption="../report/qc_participants.rst",
            category="Quality control",
        ),
    log:
        f"{LOGS}/qc_table.log",
    conda:
        "../../envs/ageatlas.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        max_excluded_fraction=config["qc"]["max_excluded_fraction"],
    script:
        "../scripts/qc_table.py"
