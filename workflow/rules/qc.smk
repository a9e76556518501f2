# The QC table: one row per participant known from the phenotype table or
# the zip folder, with its status (ok, warning, excluded) and reasons.


rule phenotype_qc:
    input:
        phenotypes=PHENOTYPES,
        zips=[participant_zip(eid) for eid in EIDS],
    output:
        PHENOTYPE_QC,
    params:
        schema=PHENOTYPE_SCHEMA,
        columns=config["phenotypes"]["columns"],
        zip_dir=ZIP_DIR,
        instance=INSTANCE,
    log:
        f"{LOGS}/phenotype_qc.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
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
        table=f"{RESULTS}/qc/participants.tsv",
    params:
        max_excluded_fraction=config["qc"]["max_excluded_fraction"],
    log:
        f"{LOGS}/qc_table.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/qc_table.py"
