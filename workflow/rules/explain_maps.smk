# The explain stage, 4/4: population maps per group, age band and ageing
# class, the voxel-wise class test and the figures. Paths carry the group, so
# one group reruns on its own (README, "Partial reruns").


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
        mem_mb=memory(1000),
        runtime=grows(5),
    params:
        maps=config["maps"],
    script:
        "../scripts/explain/ageing_classes.py"


rule population_map:
    input:
        cohort=COHORT_TABLE,  # params read the cohort (checkpoint)
        classes=rules.ageing_classes.output[0],
        predictions=rules.correct_bias.output.predictions,
        atlas=lambda wc: atlas_path(wc.group),
        warp=lambda wc: stage_manifests(WARP_MANIFEST, ["test"], wc.group),
        registration=lambda wc: stage_manifests(REGISTER_MANIFEST, ["test"], wc.group),
    output:
        mean=f"{EXPLAIN}/{{group}}/maps/{{subset}}_mean.nii.gz",
        sd=f"{EXPLAIN}/{{group}}/maps/{{subset}}_sd.nii.gz",
        positive=f"{EXPLAIN}/{{group}}/maps/{{subset}}_positive.nii.gz",
        negative=f"{EXPLAIN}/{{group}}/maps/{{subset}}_negative.nii.gz",
        coverage=f"{EXPLAIN}/{{group}}/maps/{{subset}}_count.nii.gz",
        per_year=f"{EXPLAIN}/{{group}}/maps/{{subset}}_per_year.nii.gz",
        per_year_of_age=f"{EXPLAIN}/{{group}}/maps/{{subset}}_per_year_of_age.nii.gz",
        members=f"{EXPLAIN}/{{group}}/maps/{{subset}}.json",
    log:
        f"{LOGS}/maps/{{group}}/{{subset}}.log",
    conda:
        "../../envs/ageatlas.yaml"
    threads: 1
    resources:
        mem_mb=memory(8000),
        runtime=grows(30),
    params:
        warped=group_files(WARPED),
        records=group_files(REGISTRATION_RECORD),
        fwhm_mm=config["maps"]["fwhm_mm"],
    script:
        "../scripts/explain/population_map.py"


rule class_test:
    input:
        cohort=COHORT_TABLE,  # params read the cohort (checkpoint)
        classes=rules.ageing_classes.output[0],
        atlas=lambda wc: atlas_path(wc.group),
        warp=lambda wc: stage_manifests(WARP_MANIFEST, ["test"], wc.group),
        registration=lambda wc: stage_manifests(REGISTER_MANIFEST, ["test"], wc.group),
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
        mem_mb=memory(32000),
        runtime=grows(120),
    params:
        warped=group_files(WARPED),
        records=group_files(REGISTRATION_RECORD),
        maps=config["maps"],
        seed=config["seed"],
        contrast={
            "column": "ageing_class",
            "levels": ["accelerated", "decelerated"],
            "confounds": config["maps"]["class_test_confounds"],
        },
    script:
        "../scripts/explain/class_test.py"


# The same test between the youngest and the oldest age band of a group.
# Age is not a confound here: it defines the bands, so adjusting for it
# would remove the very difference under test.
use rule class_test as age_band_test with:
    output:
        t=f"{EXPLAIN}/{{group}}/stats/age_band_lt60_vs_ge70_t.nii.gz",
        logp=f"{EXPLAIN}/{{group}}/stats/age_band_lt60_vs_ge70_logp_fwe.nii.gz",
        significant=f"{EXPLAIN}/{{group}}/stats/age_band_lt60_vs_ge70_significant.nii.gz",
        summary=f"{EXPLAIN}/{{group}}/stats/age_band_lt60_vs_ge70.json",
    log:
        f"{LOGS}/stats/{{group}}_age_band_lt60_vs_ge70.log",
    params:
        warped=group_files(WARPED),
        records=group_files(REGISTRATION_RECORD),
        maps=config["maps"],
        seed=config["seed"],
        contrast={
            "column": "age_band",
            "levels": ["lt60", "ge70"],
            "confounds": config["maps"]["age_band_test_confounds"],
        },


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
        mem_mb=memory(4000),
        runtime=grows(10),
    params:
        threshold=config["maps"]["threshold"],
    script:
        "../scripts/explain/group_figures.py"


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
        mem_mb=memory(8000),
        runtime=grows(10),
    params:
        threshold=config["maps"]["threshold"],
    script:
        "../scripts/explain/importance_figure.py"


rule examples_figure:
    input:
        cohort=COHORT_TABLE,  # params read the cohort (checkpoint)
        atlas=atlas_path(config["maps"]["example_group"]),
        classes=rules.ageing_classes.output[0],
        warp=lambda wc: stage_manifests(
            WARP_MANIFEST, ["test"], config["maps"]["example_group"]
        ),
        registration=lambda wc: stage_manifests(
            REGISTER_MANIFEST, ["test"], config["maps"]["example_group"]
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
        mem_mb=memory(4000),
        runtime=grows(10),
    params:
        warped=lambda wc: expand(
            WARPED,
            group=config["maps"]["example_group"],
            eid=test_members(config["maps"]["example_group"]),
        ),
        records=lambda wc: expand(
            REGISTRATION_RECORD,
            group=config["maps"]["example_group"],
            eid=test_members(config["maps"]["example_group"]),
        ),
        group=config["maps"]["example_group"],
        per_class=config["maps"]["examples_per_class"],
        threshold=config["maps"]["threshold"],
    script:
        "../scripts/explain/examples_figure.py"


# ---- SYNTHETIC cohort only: checks against the planted truth ---------------

if SYNTHETIC:

    rule truth_check:
        input:
            cohort=COHORT_TABLE,  # params read the cohort (checkpoint)
            atlas=lambda wc: atlas_path(wc.group),
            labels=f"{ZIP_DIR}/truth",
            mean=f"{EXPLAIN}/{{group}}/maps/all_mean.nii.gz",
            per_year=f"{EXPLAIN}/{{group}}/maps/all_per_year.nii.gz",
            per_year_of_age=f"{EXPLAIN}/{{group}}/maps/all_per_year_of_age.nii.gz",
            warp=lambda wc: stage_manifests(WARP_MANIFEST, ["test"], wc.group),
            registration=lambda wc: stage_manifests(
                REGISTER_MANIFEST, ["test"], wc.group
            ),
        output:
            f"{EXPLAIN}/{{group}}/truth_check.json",
        log:
            f"{LOGS}/truth_check/{{group}}.log",
        conda:
            "../../envs/ageatlas.yaml"
        threads: 1
        resources:
            mem_mb=memory(8000),
            runtime=grows(30),
        params:
            transforms=group_files(REGISTRATION),
            gradcam_maps=group_files(GRADCAM),
            stitched=group_files(STITCHED),
            gradcam=config["gradcam"],
            downsample=config["preprocess"]["downsample"],
            fwhm_mm=config["maps"]["fwhm_mm"],
        script:
            "../scripts/explain/truth_check.py"

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
            mem_mb=memory(1000),
            runtime=grows(5),
        script:
            "../scripts/explain/truth_summary.py"
