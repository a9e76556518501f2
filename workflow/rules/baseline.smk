# The 2.5D baseline of Langner et al. 2019, the paper's comparison (Table 1's
# 2.5D columns, Figure 9): per-participant projections of the stitched water
# and fat, VGG16-bn trained, predicted and bias-corrected by the 3D model's
# rules and scripts (use rule ... with; the family param picks the model).


rule projection:
    input:
        cohort=COHORT_TABLE,  # params read the cohort (checkpoint)
        stitch=lambda wc: manifests_for(
            STITCH_MANIFEST, plan_members(PROJECTION_SPLITS)(wc), BATCH_COUNT
        ),
    output:
        PROJECTION_MANIFEST,
    log:
        f"{LOGS}/projection/batch_{{batch}}.log",
    benchmark:
        f"{BENCHMARKS}/projection/batch_{{batch}}.tsv"
    conda:
        "../../envs/ageatlas.yaml"
    threads: BATCH["threads"]
    resources:
        **batch_resources("projection"),
    params:
        projection=config["projection"],
        eids=plan_members(PROJECTION_SPLITS),
        stitched=literal(STITCHED),
        out=literal(PROJECTION),
        records=batch_records(BASELINE, "projection"),
        logs=f"{LOGS}/projection",
    script:
        "../scripts/baseline/projection.py"


use rule train_age_model as train_baseline with:
    input:
        cohort=COHORT_TABLE,
        caches=lambda wc: stage_manifests(PROJECTION_MANIFEST, PROJECTION_SPLITS),
    output:
        checkpoint=f"{BASELINE}/model/checkpoint.pt",
        metrics=report(
            f"{BASELINE}/model/metrics.tsv",
            caption="../report/baseline_metrics.rst",
            category="Age model",
            subcategory="2.5D baseline",
        ),
    log:
        f"{LOGS}/train_baseline.log",
    benchmark:
        f"{BENCHMARKS}/train_baseline.tsv"
    resources:
        gpu=config["baseline"]["gpus"],
        mem_mb=memory(16000),
        runtime=config["baseline"]["runtime"],
    params:
        train=config["baseline"],
        model={},  # the baseline section holds the model's settings too
        family="2.5d",
        train_caches=lambda wc: projection_paths(*config["baseline"]["train_splits"]),
        val_caches=lambda wc: projection_paths("val"),


use rule predict_age as predict_baseline with:
    input:
        checkpoint=rules.train_baseline.output.checkpoint,
        cohort=COHORT_TABLE,
        caches=lambda wc: stage_manifests(PROJECTION_MANIFEST, PROJECTION_SPLITS),
    output:
        predictions=f"{BASELINE}/predictions.tsv",
        timing=f"{BASELINE}/inference_timing.json",
    log:
        f"{LOGS}/predict_baseline.log",
    benchmark:
        f"{BENCHMARKS}/predict_baseline.tsv"
    resources:
        gpu=min(1, config["baseline"]["gpus"]),
        mem_mb=memory(8000),
        runtime=grows(60),
    params:
        batch_size=config["baseline"]["batch_size"],
        family="2.5d",
        caches=lambda wc: projection_paths("val", "test"),


use rule correct_bias as correct_bias_baseline with:
    input:
        rules.predict_baseline.output.predictions,
    output:
        predictions=report(
            f"{BASELINE}/predictions_corrected.tsv",
            caption="../report/baseline_predictions.rst",
            category="Age model",
            subcategory="2.5D baseline",
        ),
        coefficients=f"{BASELINE}/bias_correction.json",
    log:
        f"{LOGS}/correct_bias_baseline.log",


rule baseline_gradcam_figure:
    input:
        checkpoint=rules.train_baseline.output.checkpoint,
        cohort=COHORT_TABLE,
        projections=lambda wc: stage_manifests(PROJECTION_MANIFEST, PROJECTION_SPLITS),
    output:
        figure=report(
            f"{BASELINE}/figures/gradcam_projections.png",
            caption="../report/baseline_figure.rst",
            category="Age model",
            subcategory="2.5D baseline",
        ),
    log:
        f"{LOGS}/baseline_gradcam_figure.log",
    conda:
        "../../envs/ageatlas.yaml"
    threads: 1
    resources:
        gpu=min(1, config["baseline"]["gpus"]),
        mem_mb=memory(4000),
        runtime=grows(30),
    params:
        projections=lambda wc: expand(PROJECTION, eid=figure9_participants()),
    script:
        "../scripts/baseline/baseline_gradcam_figure.py"
