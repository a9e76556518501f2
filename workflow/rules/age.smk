# The age stage: training cache, 3D ResNet-18 training (GPU), prediction,
# bias correction, Table 1 and figures.


rule preprocess:
    input:
        cohort=COHORT_TABLE,  # params read the cohort (checkpoint)
        stitch=lambda wc: manifests_for(
            STITCH_MANIFEST, plan_members(CACHED_SPLITS)(wc), BATCH_COUNT
        ),
    output:
        PREPROCESS_MANIFEST,
    log:
        f"{LOGS}/preprocess/batch_{{batch}}.log",
    benchmark:
        f"{BENCHMARKS}/preprocess/batch_{{batch}}.tsv"
    conda:
        "../../envs/ageatlas.yaml"
    threads: BATCH["threads"]
    resources:
        **batch_resources("preprocess"),
    params:
        # no seed: the cache leaves the background noise to the reads (ageatlas.age.preprocess)
        preprocess=config["preprocess"],
        eids=plan_members(CACHED_SPLITS),
        stitched=literal(STITCHED),
        cache=literal(CACHE),
        records=batch_records(f"{RESULTS}/{paths.AGE}", "preprocess"),
        logs=f"{LOGS}/preprocess",
    script:
        "../scripts/age/preprocess.py"


rule train_age_model:
    input:
        cohort=COHORT_TABLE,
        caches=lambda wc: stage_manifests(PREPROCESS_MANIFEST, CACHED_SPLITS),
    output:
        checkpoint=AGE_CHECKPOINT,
        metrics=report(
            f"{AGE_MODEL}/metrics.tsv",
            caption="../report/training_metrics.rst",
            category="Age model",
        ),
    log:
        f"{LOGS}/train_age_model.log",
    benchmark:
        f"{BENCHMARKS}/train_age_model.tsv"
    conda:
        "../../envs/ageatlas.yaml"
    threads: 8
    resources:
        gpu=config["train"]["gpus"],
        mem_mb=memory(32000),
        runtime=config["train"]["runtime"],
    params:
        train=config["train"],
        model=config["model"],
        seed=config["seed"],
        train_caches=lambda wc: cache_paths("train"),
        val_caches=lambda wc: cache_paths("val"),
    script:
        "../scripts/age/train_age_model.py"


# A trained model given in the config (model.checkpoint) takes train_age_model's
# place: checked, and copied where the trained one would be.
if GIVEN_CHECKPOINT:

    rule given_checkpoint:
        input:
            given=GIVEN_CHECKPOINT,
        output:
            checkpoint=AGE_CHECKPOINT,
        log:
            f"{LOGS}/given_checkpoint.log",
        conda:
            "../../envs/ageatlas.yaml"
        threads: 1
        resources:
            mem_mb=memory(4000),
            runtime=grows(10),
        script:
            "../scripts/age/given_checkpoint.py"

    ruleorder: given_checkpoint > train_age_model


rule predict_age:
    input:
        # A path, not rules.train_age_model.output: that would pin the producer to
        # training, given checkpoint or not.
        checkpoint=AGE_CHECKPOINT,
        cohort=COHORT_TABLE,
        caches=lambda wc: stage_manifests(PREPROCESS_MANIFEST, CACHED_SPLITS),
    output:
        predictions=f"{AGE}/predictions.tsv",
        timing=f"{AGE}/inference_timing.json",
    log:
        f"{LOGS}/predict_age.log",
    benchmark:
        f"{BENCHMARKS}/predict_age.tsv"
    conda:
        "../../envs/ageatlas.yaml"
    threads: 4
    resources:
        gpu=min(1, config["train"]["gpus"]),
        mem_mb=memory(16000),
        runtime=grows(120),
    params:
        batch_size=config["predict"]["batch_size"],
        caches=lambda wc: cache_paths("val", "test"),
    script:
        "../scripts/age/predict_age.py"


rule correct_bias:
    input:
        rules.predict_age.output.predictions,
        coefficients=GIVEN_COEFFICIENTS or [],
    output:
        predictions=report(
            f"{AGE}/predictions_corrected.tsv",
            caption="../report/predictions.rst",
            category="Age model",
        ),
        coefficients=f"{AGE}/bias_correction.json",
    log:
        f"{LOGS}/correct_bias.log",
    conda:
        "../../envs/ageatlas.yaml"
    threads: 1
    resources:
        mem_mb=memory(2000),
        runtime=grows(10),
    params:
        method=config["bias"]["method"],
    script:
        "../scripts/age/correct_bias.py"


rule table1:
    input:
        predictions=rules.correct_bias.output.predictions,
        cohort=COHORT_TABLE,
        metrics=unless_given(rules.train_age_model.output.metrics),
        timing=rules.predict_age.output.timing,
        correction=rules.correct_bias.output.coefficients,
        # the 2.5D baseline's records (workflow/rules/baseline.smk)
        baseline_predictions=if_baseline(f"{BASELINE}/predictions_corrected.tsv"),
        baseline_metrics=if_baseline(f"{BASELINE}/model/metrics.tsv"),
        baseline_timing=if_baseline(f"{BASELINE}/inference_timing.json"),
        baseline_correction=if_baseline(f"{BASELINE}/bias_correction.json"),
    output:
        tsv=report(
            f"{AGE}/table1.tsv",
            caption="../report/table1.rst",
            category="Age model",
        ),
        md=report(
            f"{AGE}/table1.md",
            caption="../report/table1.rst",
            category="Age model",
        ),
    log:
        f"{LOGS}/table1.log",
    conda:
        "../../envs/ageatlas.yaml"
    threads: 1
    resources:
        mem_mb=memory(2000),
        runtime=grows(10),
    params:
        baseline_splits=config["baseline"]["train_splits"],
        given_checkpoint=GIVEN_CHECKPOINT,
    script:
        "../scripts/age/table1.py"


rule age_figures:
    input:
        predictions=rules.correct_bias.output.predictions,
        cohort=COHORT_TABLE,
    output:
        before_after=report(
            f"{AGE}/figures/predicted_vs_age.png",
            caption="../report/predicted_vs_age.rst",
            category="Age model",
        ),
        by_group=report(
            f"{AGE}/figures/predicted_vs_age_by_group.png",
            caption="../report/predicted_vs_age_by_group.rst",
            category="Age model",
        ),
    log:
        f"{LOGS}/age_figures.log",
    conda:
        "../../envs/ageatlas.yaml"
    threads: 1
    resources:
        mem_mb=memory(2000),
        runtime=grows(10),
    script:
        "../scripts/age/age_figures.py"
