# The explain stage, 1/4: an attribution map per test participant (gradcam.method),
# in its own (stitched) space.


rule reference_volume:
    input:
        cohort=COHORT_TABLE,  # params read the cohort (checkpoint)
        caches=lambda wc: stage_manifests(PREPROCESS_MANIFEST, CACHED_SPLITS),
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
    params:
        caches=lambda wc: cache_paths("train"),
    script:
        "../scripts/explain/reference_volume.py"


rule gradcam:
    input:
        checkpoint=AGE_CHECKPOINT,
        caches=lambda wc: manifests_for(
            PREPROCESS_MANIFEST, plan_members(["test"])(wc), BATCH_COUNT
        ),
        cohort=COHORT_TABLE,
        reference=gradcam_reference,
        registrations=gradcam_registrations,
        atlases=lambda wc: list(gradcam_atlases(wc).values()),
    output:
        GRADCAM_MANIFEST,
    log:
        f"{LOGS}/gradcam/batch_{{batch}}.log",
    benchmark:
        f"{BENCHMARKS}/gradcam/batch_{{batch}}.tsv"
    conda:
        "../../envs/ageatlas.yaml"
    threads: 2
    resources:
        **batch_resources(
            "gradcam",
            pooled=False,
            device="cuda" if config["train"]["gpus"] else "cpu",
            threads=2,
        ),
        gpu=min(1, config["train"]["gpus"]),
    params:
        gradcam=config["gradcam"],
        downsample=config["preprocess"]["downsample"],
        eids=plan_members(["test"]),
        stitched=literal(STITCHED),
        cache=literal(CACHE),
        out=literal(GRADCAM),
        atlases=gradcam_atlases,
        registration=literal(REGISTRATION),
        records=batch_records(EXPLAIN, "gradcam"),
        logs=f"{LOGS}/gradcam",
    script:
        "../scripts/explain/gradcam.py"
