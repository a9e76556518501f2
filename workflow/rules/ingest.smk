# One job per participant: field-20201 zip -> stitched water/fat NIfTI.
# The output folder always holds qc.json; the images only when the
# participant passed (see docs/design.md, "Broken participants").


rule stitch:
    input:
        zip=participant_zip("{eid}"),
    output:
        directory(f"{RESULTS}/stitched/{{eid}}"),
    log:
        f"{LOGS}/stitch/{{eid}}.log",
    benchmark:
        f"{BENCHMARKS}/stitch/{{eid}}.tsv"
    conda:
        "../../envs/ageatlas.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        stitch=config["stitch"],
    script:
        "../scripts/stitch.py"
