# The explain stage, 1/4: a Grad-CAM map per test participant, in its own
# (stitched) space.


rule gradcam:
    input:
        checkpoint=rules.train_age_model.output.checkpoint,
        cache=CACHE,
        stitched=STITCHED,
        cohort=COHORT_TABLE,
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
