# The embedded synthetic cohort, in the real UK Biobank field-20201 layout.
if SYNTHETIC:

    rule synthetic_cohort:
        output:
            zips=[participant_zip(eid) for eid in EIDS],
            phenotypes=PHENOTYPES,
            truth=f"{ZIP_DIR}/truth.tsv",
            labels=directory(f"{ZIP_DIR}/truth"),
        log:
            f"{LOGS}/synthetic_cohort.log",
        benchmark:
            f"{BENCHMARKS}/synthetic_cohort.tsv"
        conda:
            "../../envs/ageatlas.yaml"
        threads: 2  # participants written side by side, each by its own process
        resources:
            mem_mb=memory(2000),
            runtime=grows(30),
        params:
            n=config["synthetic"]["n_participants"],
            scale=config["synthetic"]["scale"],
            defects=config["synthetic"]["defects"],
            seed=config["seed"],
            offset_sd=config["synthetic"]["age_offset_sd"],
            age_effect_scale=config["synthetic"]["age_effect_scale"],
            position_sd_mm=config["synthetic"]["position_sd_mm"],
        script:
            "../scripts/synthetic/synthetic_cohort.py"
