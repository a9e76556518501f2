# The explain stage, 3/4: registration of each test participant to its
# group's atlas, warping of its attribution map, and the registration QC
# table. One job per batch of a group's test participants (config batch).

# Settings the schema cannot check, checked when the DAG is built rather than in every job.
_REG = config["registration"]
if not 0 <= _REG["finest_level"] < _REG["levels"]:
    raise WorkflowError(
        f"registration: finest_level must be below levels (0 to {_REG['levels'] - 1}), "
        f"got finest_level {_REG['finest_level']} with levels {_REG['levels']}"
    )
_missing = set(_REG["channels"]) - set(config["stitch"]["contrasts"])
if _missing:
    raise WorkflowError(
        f"registration: channels {sorted(_missing)} are not stitched; add them to "
        f"stitch.contrasts (now {config['stitch']['contrasts']})"
    )
for _mm, _voxels in (
    ("control_point_spacing_mm", "stride"),
    ("lncc_window_mm", "lncc_kernel"),
):
    if _mm in _REG and _voxels in _REG:
        raise WorkflowError(
            f"registration: give {_mm} (millimetres) or {_voxels} (voxels, older), not both"
        )


rule register:
    input:
        cohort=COHORT_TABLE,  # params read the cohort (checkpoint)
        atlas=lambda wc: channel_files(atlas_path(wc.group)),
        stitch=lambda wc: manifests_for(
            STITCH_MANIFEST, register_members(wc), BATCH_COUNT
        ),
    output:
        REGISTER_MANIFEST,
    log:
        f"{LOGS}/register/{{group}}/batch_{{batch}}.log",
    benchmark:
        f"{BENCHMARKS}/register/{{group}}/batch_{{batch}}.tsv"
    conda:
        "../../envs/ageatlas.yaml"
    threads: 2 if REG_GPUS else BATCH["threads"]
    resources:
        **batch_resources(
            "register", pooled=not REG_GPUS, device="cuda" if REG_GPUS else "cpu"
        ),
        gpu=REG_GPUS,
    params:
        registration=config["registration"],
        built_atlas=lambda wc: wc.group not in config["atlas"]["given"],
        eids=register_members,
        stitched=literal(STITCHED),
        out=literal(f"{EXPLAIN}/{{group}}/registration/{{eid}}"),
        records=batch_records(f"{EXPLAIN}/{{group}}", "register"),
        logs=f"{LOGS}/register/{{group}}",
    script:
        "../scripts/explain/register.py"


rule warp_gradcam:
    input:
        cohort=COHORT_TABLE,  # params read the cohort (checkpoint)
        registration=REGISTER_MANIFEST,
        gradcam=lambda wc: manifests_for(
            GRADCAM_MANIFEST, register_members(wc), BATCH_COUNT
        ),
        atlas=lambda wc: atlas_path(wc.group),
    output:
        WARP_MANIFEST,
    log:
        f"{LOGS}/warp/{{group}}/batch_{{batch}}.log",
    benchmark:
        f"{BENCHMARKS}/warp/{{group}}/batch_{{batch}}.tsv"
    conda:
        "../../envs/ageatlas.yaml"
    threads: BATCH["threads"]
    resources:
        **batch_resources("warp_gradcam"),
    params:
        eids=register_members,
        gradcam=literal(GRADCAM),
        registration=literal(REGISTRATION),
        out=literal(WARPED),
        records=batch_records(f"{EXPLAIN}/{{group}}", "warp_gradcam"),
        logs=f"{LOGS}/warp/{{group}}",
    script:
        "../scripts/explain/warp_gradcam.py"


rule registration_qc:
    input:
        registration=lambda wc: [
            path
            for group in active_groups()
            for path in stage_manifests(REGISTER_MANIFEST, ["test"], group)
        ],
        cohort=COHORT_TABLE,  # params read the cohort (checkpoint)
    output:
        report(
            REGISTRATION_QC,
            caption="../report/qc_registration.rst",
            category="Quality control",
        ),
    log:
        f"{LOGS}/registration_qc.log",
    conda:
        "../../envs/ageatlas.yaml"
    threads: 1
    resources:
        mem_mb=memory(2000),
        runtime=grows(10),
    params:
        records=all_test_files(REGISTRATION_RECORD),
    script:
        "../scripts/explain/registration_qc.py"
