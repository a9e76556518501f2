# The age model: cohort table and split, training cache, 3D ResNet-18
# training (GPU), prediction, bias correction, Table 1 and figures.


# A checkpoint: the split decides which caches training and prediction need.
checkpoint cohort_table:
    input:
        qc=f"{RESULTS}/qc/participants.tsv",
        phenotypes=PHENOTYPES,
        schema=PHENOTYPE_SCHEMA,
    output:
        table=report(COHORT_TABLE, caption="../report/cohort.rst", category="Age model"),
    log:
        f"{LOGS}/cohort_table.log",
    conda:
        "../../envs/ageatlas.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        columns=config["phenotypes"]["columns"],
        split=config["split"],
        seed=config["seed"],
    script:
        "../scripts/cohort_table.py"


rule preprocess:
    input:
        f"{RESULTS}/stitched/{{eid}}",
    output:
        f"{RESULTS}/cache/{{eid}}.npy",
    log:
        f"{LOGS}/preprocess/{{eid}}.log",
    benchmark:
        f"{BENCHMARKS}/preprocess/{{eid}}.tsv"
    conda:
        "../../envs/ageatlas.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        preprocess=config["preprocess"],
        seed=config["seed"],
    script:
        "../scripts/preprocess.py"


rule train_age_model:
    input:
        cohort=COHORT_TABLE,
        train=lambda wc: cache_paths("train"),
        val=lambda wc: cache_paths("val"),
    output:
        checkpoint=f"{RESULTS}/model/checkpoint.pt",
        metrics=report(
            f"{RESULTS}/model/metrics.tsv",
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
        mem_mb=32000,
        runtime=config["train"]["runtime"],
    params:
        train=config["train"],
        model=config["model"],
        seed=config["seed"],
    script:
        "../scripts/train_age_model.py"


rule predict_age:
    input:
        checkpoint=rules.train_age_model.output.checkpoint,
        cohort=COHORT_TABLE,
        caches=lambda wc: cache_paths("val", "test"),
    output:
        predictions=f"{RESULTS}/age/predictions.tsv",
        timing=f"{RESULTS}/age/inference_timing.json",
    log:
        f"{LOGS}/predict_age.log",
    benchmark:
        f"{BENCHMARKS}/predict_age.tsv"
    conda:
        "../../envs/ageatlas.yaml"
    threads: 4
    resources:
        gpu=min(1, config["train"]["gpus"]),
        mem_mb=16000,
        runtime=120,
    params:
        batch_size=config["predict"]["batch_size"],
    script:
        "../scripts/predict_age.py"


rule correct_bias:
    input:
        rules.predict_age.output.predictions,
    output:
        predictions=report(
            f"{RESULTS}/age/predictions_corrected.tsv",
            caption="../report/predictions.rst",
            category="Age model",
        ),
        coefficients=f"{RESULTS}/age/bias_correction.json",
    log:
        f"{LOGS}/correct_bias.log",
    conda:
        "../../envs/ageatlas.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        method=config["bias"]["method"],
    script:
        "../scripts/correct_bias.py"


rule table1:
    input:
        predictions=rules.correct_bias.output.predictions,
        cohort=COHORT_TABLE,
        metrics=rules.train_age_model.output.metrics,
        timing=rules.predict_age.output.timing,
        correction=rules.correct_bias.output.coefficients,
        # the 2.5D baseline's records (workflow/rules/baseline.smk)
        baseline_predictions=f"{BASELINE}/predictions_corrected.tsv",
        baseline_metrics=f"{BASELINE}/model/metrics.tsv",
        baseline_timing=f"{BASELINE}/inference_timing.json",
        baseline_correction=f"{BASELINE}/bias_correction.json",
    output:
        tsv=report(
            f"{RESULTS}/age/table1.tsv",
            caption="../report/table1.rst",
            category="Age model",
        ),
        md=report(
            f"{RESULTS}/age/table1.md",
            caption="../report/table1.rst",
            category="Age model",
        ),
    log:
        f"{LOGS}/table1.log",
    conda:
        "../../envs/ageatlas.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        baseline_splits=config["baseline"]["train_splits"],
    script:
        "../scripts/table1.py"


rule age_figures:
    input:
        predictions=rules.correct_bias.output.predictions,
        cohort=COHORT_TABLE,
    output:
        before_after=report(
            f"{RESULTS}/age/figures/predicted_vs_age.png",
            caption="../report/predicted_vs_age.rst",
            category="Age model",
        ),
        by_group=report(
            f"{RESULTS}/age/figures/predicted_vs_age_by_group.png",
            caption="../report/predicted_vs_age_by_group.rst",
            category="Age model",
        ),
    log:
        f"{LOGS}/age_figures.log",
    conda:
        "../../envs/ageatlas.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/age_figures.py"
