# Interpretability: Grad-CAM per test participant, sex x BMI group atlases,
# registration of each test participant to its group's atlas, warped maps,
# population maps per group / age band / ageing class, a voxel-wise test and
# figures. Paths carry the group, so one group reruns on its own
# (e.g. `snakemake results/.../explain/F_overweight/figures/importance_by_age_band.png`).


rule gradcam:
    input:
        checkpoint=rules.train_age_model.output.checkpoint,
        cache=f"{RESULTS}/cache/{{eid}}.npy",
        stitched=f"{RESULTS}/stitched/{{eid}}",
        cohort=COHORT_TABLE,
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


# ---- group atlases (skipped for groups in config atlas.given) --------------


rule atlas_init:
    input:
        stitched=lambda wc: f"{RESULTS}/stitched/{atlas_reference(wc.group)}",
    output:
        template(r"{group}", 0),
    log:
        f"{LOGS}/atlas/{{group}}/init.log",
    conda:
        "../../envs/ageatlas.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        clip=config["registration"]["clip"],
    script:
        "../scripts/atlas_init.py"


rule atlas_register:
    input:
        template=f"{ATLAS_DIR}/{{group}}/iter{{iteration}}/template.nii.gz",
        stitched=f"{RESULTS}/stitched/{{eid}}",
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
        mem_mb=16000,
        runtime=60,
    params:
        registration=config["registration"],
    script:
        "../scripts/atlas_register.py"


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
        mem_mb=16000,
        runtime=60,
    script:
        "../scripts/atlas_update.py"


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
        mem_mb=1000,
        runtime=5,
    script:
        "../scripts/copy_atlas.py"


# ---- registration of test participants, warping of their maps --------------


rule register:
    input:
        atlas=lambda wc: atlas_path(wc.group),
        stitched=f"{RESULTS}/stitched/{{eid}}",
        cohort=COHORT_TABLE,
    output:
        transform=f"{EXPLAIN}/{{group}}/registration/{{eid}}.pt",
        record=f"{EXPLAIN}/{{group}}/registration/{{eid}}.json",
    log:
        f"{LOGS}/register/{{group}}/{{eid}}.log",
    benchmark:
        f"{BENCHMARKS}/register/{{group}}/{{eid}}.tsv"
    conda:
        "../../envs/ageatlas.yaml"
    threads: 1
    resources:
        gpu=REG_GPUS,
        mem_mb=16000,
        runtime=60,
    params:
        registration=config["registration"],
        built_atlas=lambda wc: wc.group not in config["atlas"]["given"],
    script:
        "../scripts/register.py"


rule warp_gradcam:
    input:
        transform=rules.register.output.transform,
        gradcam=f"{RESULTS}/gradcam/{{eid}}.nii.gz",
        atlas=lambda wc: atlas_path(wc.group),
    output:
        f"{EXPLAIN}/{{group}}/warped/{{eid}}.nii.gz",
    log:
        f"{LOGS}/warp/{{group}}/{{eid}}.log",
    conda:
        "../../envs/ageatlas.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=15,
    script:
        "../scripts/warp_gradcam.py"


rule registration_qc:
    input:
        all_test_files(f"{EXPLAIN}/{{group}}/registration/{{eid}}.json"),
    output:
        report(
            f"{RESULTS}/qc/registration.tsv",
            caption="../report/qc_registration.rst",
            category="Quality control",
        ),
    log:
        f"{LOGS}/registration_qc.log",
    conda:
        "../../envs/ageatlas.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/registration_qc.py"


# ---- population maps, the class test and figures ---------------------------


rule ageing_classes:
    input:
        predictions=rules.correct_bias.output.predictions,
        cohort=COHORT_TABLE,
    output:
        report(
            f"{EXPLAIN}/ageing_classes.tsv",
            caption="../report/ageing_classes.rst",
            category="Population maps",
            subcategory="All groups",
        ),
    log:
        f"{LOGS}/ageing_classes.log",
    conda:
        "../../envs/ageatlas.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        maps=config["maps"],
    script:
        "../scripts/ageing_classes.py"


rule population_map:
    input:
        classes=rules.ageing_classes.output[0],
        warped=group_files(f"{EXPLAIN}/{{group}}/warped/{{eid}}.nii.gz"),
        records=group_files(f"{EXPLAIN}/{{group}}/registration/{{eid}}.json"),
    output:
        mean=f"{EXPLAIN}/{{group}}/maps/{{subset}}_mean.nii.gz",
        sd=f"{EXPLAIN}/{{group}}/maps/{{subset}}_sd.nii.gz",
        members=f"{EXPLAIN}/{{group}}/maps/{{subset}}.json",
    log:
        f"{LOGS}/maps/{{group}}/{{subset}}.log",
    conda:
        "../../envs/ageatlas.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    script:
        "../scripts/population_map.py"


rule class_test:
    input:
        classes=rules.ageing_classes.output[0],
        warped=group_files(f"{EXPLAIN}/{{group}}/warped/{{eid}}.nii.gz"),
        records=group_files(f"{EXPLAIN}/{{group}}/registration/{{eid}}.json"),
    output:
        t=f"{EXPLAIN}/{{group}}/stats/accelerated_vs_decelerated_t.nii.gz",
        logp=f"{EXPLAIN}/{{group}}/stats/accelerated_vs_decelerated_logp_fwe.nii.gz",
        significant=f"{EXPLAIN}/{{group}}/stats/accelerated_vs_decelerated_significant.nii.gz",
        summary=f"{EXPLAIN}/{{group}}/stats/accelerated_vs_decelerated.json",
    log:
        f"{LOGS}/stats/{{group}}.log",
    conda:
        "../../envs/ageatlas.yaml"
    threads: 2
    resources:
        mem_mb=32000,
        runtime=120,
    params:
        maps=config["maps"],
        seed=config["seed"],
    script:
        "../scripts/class_test.py"


rule group_figures:
    input:
        atlas=lambda wc: atlas_path(wc.group),
        bands=[group_map(s) for s in SUBSETS if s.startswith("age_band")],
        classes=[group_map(s) for s in SUBSETS if s.startswith("ageing_class")],
        members=[f"{EXPLAIN}/{{group}}/maps/{s}.json" for s in SUBSETS],
        t=rules.class_test.output.t,
        significant=rules.class_test.output.significant,
        summary=rules.class_test.output.summary,
    output:
        bands=report(
            f"{EXPLAIN}/{{group}}/figures/importance_by_age_band.png",
            caption="../report/group_age_band.rst",
            category="Population maps",
            subcategory="{group}",
        ),
        classes=report(
            f"{EXPLAIN}/{{group}}/figures/importance_by_ageing_class.png",
            caption="../report/group_ageing_class.rst",
            category="Population maps",
            subcategory="{group}",
        ),
        test=report(
            f"{EXPLAIN}/{{group}}/figures/accelerated_vs_decelerated.png",
            caption="../report/group_class_test.rst",
            category="Population maps",
            subcategory="{group}",
        ),
    log:
        f"{LOGS}/figures/{{group}}.log",
    conda:
        "../../envs/ageatlas.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        threshold=config["maps"]["threshold"],
    script:
        "../scripts/group_figures.py"


rule importance_figure:
    input:
        atlases=lambda wc: [atlas_path(g) for g in active_groups()],
        maps=lambda wc: expand(
            f"{EXPLAIN}/{{group}}/maps/all_mean.nii.gz", group=active_groups()
        ),
        members=lambda wc: expand(
            f"{EXPLAIN}/{{group}}/maps/all.json", group=active_groups()
        ),
    output:
        report(
            f"{EXPLAIN}/figures/importance_by_group.png",
            caption="../report/importance_by_group.rst",
            category="Population maps",
            subcategory="All groups",
        ),
    log:
        f"{LOGS}/figures/importance_by_group.log",
    conda:
        "../../envs/ageatlas.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=10,
    params:
        threshold=config["maps"]["threshold"],
    script:
        "../scripts/importance_figure.py"


rule examples_figure:
    input:
        atlas=atlas_path(config["maps"]["example_group"]),
        classes=rules.ageing_classes.output[0],
        warped=lambda wc: expand(
            f"{EXPLAIN}/{{group}}/warped/{{eid}}.nii.gz",
            group=config["maps"]["example_group"],
            eid=test_members(config["maps"]["example_group"]),
        ),
        records=lambda wc: expand(
            f"{EXPLAIN}/{{group}}/registration/{{eid}}.json",
            group=config["maps"]["example_group"],
            eid=test_members(config["maps"]["example_group"]),
        ),
    output:
        report(
            f"{EXPLAIN}/figures/examples_{config['maps']['example_group']}.png",
            caption="../report/examples.rst",
            category="Population maps",
            subcategory="All groups",
        ),
    log:
        f"{LOGS}/figures/examples.log",
    conda:
        "../../envs/ageatlas.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        group=config["maps"]["example_group"],
        per_class=config["maps"]["examples_per_class"],
        threshold=config["maps"]["threshold"],
    script:
        "../scripts/examples_figure.py"


# ---- SYNTHETIC cohort only: checks against the planted truth ---------------

if SYNTHETIC:

    rule truth_check:
        input:
            atlas=lambda wc: atlas_path(wc.group),
            labels=f"{ZIP_DIR}/truth",
            mean=f"{EXPLAIN}/{{group}}/maps/all_mean.nii.gz",
            transforms=group_files(f"{EXPLAIN}/{{group}}/registration/{{eid}}.pt"),
            gradcam=group_files(f"{RESULTS}/gradcam/{{eid}}.nii.gz"),
            stitched=group_files(f"{RESULTS}/stitched/{{eid}}"),
        output:
            f"{EXPLAIN}/{{group}}/truth_check.json",
        log:
            f"{LOGS}/truth_check/{{group}}.log",
        conda:
            "../../envs/ageatlas.yaml"
        threads: 1
        resources:
            mem_mb=8000,
            runtime=30,
        script:
            "../scripts/truth_check.py"

    rule truth_summary:
        input:
            lambda wc: expand(
                f"{EXPLAIN}/{{group}}/truth_check.json", group=active_groups()
            ),
        output:
            report(
                f"{EXPLAIN}/truth_check.tsv",
                caption="../report/truth_check.rst",
                category="Population maps",
                subcategory="All groups",
            ),
        log:
            f"{LOGS}/truth_summary.log",
        conda:
            "../../envs/ageatlas.yaml"
        threads: 1
        resources:
            mem_mb=1000,
            runtime=5,
        script:
            "../scripts/truth_summary.py"
