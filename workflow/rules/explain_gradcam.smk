# The explain stage, 1/4: an attribution map per test participant (gradcam.method),
# in its own (stitched) space.


rule reference_volume:
    input:
        lambda wc: cache_paths("train"),
    output:
        REFERENCE_VOLUME,
    log:
        f"{LOGS}/reference_volume.log",
    conda:
        "../../envs/ageatlas.yaml"
    threads: 1
    resources:
        mem_mb=memory(4000),
        runtime=grows(15),
    script:
        "../scripts/explain/reference_volume.py"


rule gradcam:
    input:
        checkpoint=AGE_CHECKPOINT,
        cache=CACHE,
        stitched=STITCHED,
        cohort=COHORT_TABLE,
        reference=gradcam_reference,
    output:
        GRADCAM,
    log:
        f"{LOGS}/gradcam/{{eid}}.log",
    benchmark:
        f"{BENCHMARKS}/gradcam/{{eid}}.tsv"
    conda:
        "../../envs/ageatlas.yaml"
    threads: 2
    resources:
        gpu=min(1, config["train"]["gpus"]),
        mem_mb=memory(16000),
        runtime=grows(30),
    params:
        gradcam=config["gradcam"],
        downsample=config["preprocess"]["downsample"],
    script:
        "../scripts/explain/gradcam.py"
