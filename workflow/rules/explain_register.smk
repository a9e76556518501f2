# The explain stage, 3/4: registration of each test participant to its
# group's atlas, warping of its Grad-CAM map, and the registration QC table.

# Settings the schema cannot check, checked when the DAG is built rather than in every job.
_REG = config["registration"]
if not 0 <= _REG["finest_level"] < _REG["levels"]:
    raise WorkflowError(
        f"registration: finest_level must be below levels (0 to {_REG['levels'] - 1}), "
        f"got finest_level {_REG['finest_level']} with levels {_REG['levels']}"
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
        atlas=lambda wc: atlas_path(wc.group),
        stitched=STITCHED,
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
        mem_mb=memory(16000),
        runtime=grows(60),
    params:
        registration=config["registration"],
        built_atlas=lambda wc: wc.group not in config["atlas"]["given"],
    script:
        "../scripts/explain/register.py"


rule warp_gradcam:
    input:
        transform=rules.register.output.transform,
        gradcam=GRADCAM,
        atlas=lambda wc: atlas_path(wc.group),
    output:
        f"{EXPLAIN}/{{group}}/warped/{{eid}}.nii.gz",
    log:
        f"{LOGS}/warp/{{group}}/{{eid}}.log",
    conda:
        "../../envs/ageatlas.yaml"
    threads: 1
    resources:
        mem_mb=memory(8000),
        runtime=grows(15),
    script:
        "../scripts/explain/warp_gradcam.py"


rule registration_qc:
    input:
        all_test_files(f"{EXPLAIN}/{{group}}/registration/{{eid}}.json"),
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
    script:
        "../scripts/explain/registration_qc.py"
