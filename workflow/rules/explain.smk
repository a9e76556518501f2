# Interpretability: one Grad-CAM map per test participant, in its stitched space.


rule gradcam:
    input:
        checkpoint=rules.train_age_model.output.checkpoint,
        cache=f"{RESULTS}/cache/{{eid}}.npy",
        stitched=f"{RESULTS}/stitched/{{eid}}",
    output:
        f"{RESULTS}/gradcam/{{eid}}.nii.gz",
    log:
        f"{LOGS}/gradcam/{{eid}}.log",
    benchmark:
        f"{BENCHMARKS}/gradcam/{{eid}}.tsv"
    conda:
        "../../envs/ageatlas.yaml"
    threads: 2
    resources:
        gpu=min(1, config["train"]["gpus"]),
        mem_mb=16000,
        runtime=30,
    params:
        gradcam=config["gradcam"],
        downsample=config["preprocess"]["downsample"],
    script:
        "../scripts/gradcam.py"
