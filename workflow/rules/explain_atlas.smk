# The explain stage, 2/4: one atlas per sex x BMI group, built by iterated
# registration of its members (skipped for groups in config atlas.given).


rule atlas_init:
    input:
        stitched=lambda wc: STITCHED.format(eid=atlas_reference(wc.group)),
    output:
        template(r"{group}", 0),
    log:
        f"{LOGS}/atlas/{{group}}/init.log",
    conda:
        "../../envs/ageatlas.yaml"
    threads: 1
    resources:
        mem_mb=memory(2000),
        runtime=grows(10),
    params:
        clip=config["registration"]["clip"],
    script:
        "../scripts/explain/atlas_init.py"


rule atlas_register:
    input:
        template=f"{ATLAS_DIR}/{{group}}/iter{{iteration}}/template.nii.gz",
        stitched=STITCHED,
    output:
        transform=f"{ATLAS_DIR}/{{group}}/iter{{iteration}}/members/{{eid}}.pt",
        record=f"{ATLAS_DIR}/{{group}}/iter{{iteration}}/members/{{eid}}.json",
        warped=f"{ATLAS_DIR}/{{group}}/iter{{iteration}}/members/{{eid}}.nii.gz",
    log:
        f"{LOGS}/atlas/{{group}}/iter{{iteration}}/{{eid}}.log",
    benchmark:
        f"{BENCHMARKS}/atlas/{{group}}/iter{{iteration}}/{{eid}}.tsv"
    conda:
        "../../envs/ageatlas.yaml"
    threads: 1
    resources:
        gpu=REG_GPUS,
        mem_mb=memory(16000),
        runtime=grows(60),
    params:
        registration=config["registration"],
    script:
        "../scripts/explain/atlas_register.py"


rule atlas_update:
    input:
        unpack(atlas_update_inputs),
    output:
        template=f"{ATLAS_DIR}/{{group}}/iter{{iteration,[1-9][0-9]*}}/template.nii.gz",
        record=f"{ATLAS_DIR}/{{group}}/iter{{iteration,[1-9][0-9]*}}/template.json",
    log:
        f"{LOGS}/atlas/{{group}}/iter{{iteration}}/update.log",
    conda:
        "../../envs/ageatlas.yaml"
    threads: 1
    resources:
        mem_mb=memory(16000),
        runtime=grows(60),
    script:
        "../scripts/explain/atlas_update.py"


rule atlas:
    input:
        lambda wc: template(wc.group, ATLAS_ITERATIONS),
    output:
        f"{ATLAS_DIR}/{{group}}.nii.gz",
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
