# The explain stage, 2/4: one atlas per sex x BMI group, built by iterated
# registration of its members (skipped for groups in config atlas.given).


rule atlas_init:
    input:
        cohort=COHORT_TABLE,  # params read the cohort (checkpoint)
        stitch=lambda wc: manifests_for(
            STITCH_MANIFEST, [atlas_reference(wc.group)], BATCH_COUNT
        ),
    output:
        channel_files(template(r"{group}", 0)),
    log:
        f"{LOGS}/atlas/{{group}}/init.log",
    conda:
        "../../envs/ageatlas.yaml"
    threads: 1
    resources:
        mem_mb=memory(2000),
        runtime=grows(10),
    params:
        stitched=lambda wc: STITCHED.format(eid=atlas_reference(wc.group)),
        clip=config["registration"]["clip"],
        channels=config["registration"]["channels"],
    script:
        "../scripts/explain/atlas_init.py"


# All members of one group and iteration in one job (a process per thread on
# the CPU, in turn on a GPU), each with its own outputs, record and log.
rule atlas_register:
    input:
        cohort=COHORT_TABLE,  # params read the cohort (checkpoint)
        template=channel_files(
            f"{ATLAS_DIR}/{{group}}/iter{{iteration}}/template.nii.gz"
        ),
        stitch=lambda wc: manifests_for(
            STITCH_MANIFEST, atlas_members(wc.group), BATCH_COUNT
        ),
    output:
        f"{ATLAS_DIR}/{{group}}/iter{{iteration}}/members.tsv",
    log:
        f"{LOGS}/atlas/{{group}}/iter{{iteration}}/members.log",
    benchmark:
        f"{BENCHMARKS}/atlas/{{group}}/iter{{iteration}}/members.tsv"
    conda:
        "../../envs/ageatlas.yaml"
    threads: 2 if REG_GPUS else BATCH["threads"]
    resources:
        **batch_resources(
            "atlas_register",
            pooled=not REG_GPUS,
            members=config["atlas"]["n_members"] or 1000,
            device="cuda" if REG_GPUS else "cpu",
        ),
        gpu=REG_GPUS,
    params:
        registration=config["registration"],
        eids=lambda wc: atlas_members(wc.group),
        stitched=literal(STITCHED),
        out=literal(f"{ATLAS_DIR}/{{group}}/iter{{iteration}}/members/{{eid}}"),
        records=f"{ATLAS_DIR}/{{group}}/iter{{iteration}}/batches/done",
        logs=f"{LOGS}/atlas/{{group}}/iter{{iteration}}",
    script:
        "../scripts/explain/atlas_register.py"


rule atlas_update:
    input:
        cohort=COHORT_TABLE,  # params read the cohort (checkpoint)
        template=lambda wc: channel_files(template(wc.group, int(wc.iteration) - 1)),
        members=lambda wc: f"{ATLAS_DIR}/{wc.group}/iter{int(wc.iteration) - 1}/members.tsv",
    output:
        template=channel_files(
            f"{ATLAS_DIR}/{{group}}/iter{{iteration,[1-9][0-9]*}}/template.nii.gz"
        ),
        record=f"{ATLAS_DIR}/{{group}}/iter{{iteration,[1-9][0-9]*}}/template.json",
    log:
        f"{LOGS}/atlas/{{group}}/iter{{iteration}}/update.log",
    conda:
        "../../envs/ageatlas.yaml"
    threads: 1
    resources:
        mem_mb=memory(16000),
        runtime=grows(60),
    params:
        members=lambda wc: f"{ATLAS_DIR}/{wc.group}/iter{int(wc.iteration) - 1}/members",
        eids=lambda wc: atlas_members(wc.group),
        channels=config["registration"]["channels"],
    script:
        "../scripts/explain/atlas_update.py"


rule atlas:
    input:
        lambda wc: channel_files(template(wc.group, ATLAS_ITERATIONS)),
    output:
        channel_files(f"{ATLAS_DIR}/{{group}}.nii.gz"),
    log:
        f"{LOGS}/atlas/{{group}}/final.log",
    conda:
        "../../envs/ageatlas.yaml"
    threads: 1
    resources:
        mem_mb=memory(1000),
        runtime=grows(5),
    script:
        "../scripts/explain/copy_atlas.py"
