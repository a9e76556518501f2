# One job per participant: field-20201 zip -> stitched water/fat NIfTI.
# The output folder always holds qc.json; the images only when the
# participant passed (see docs/design.md, "Broken participants").


rule stitch:
    input:
        zip=participant_zip("{eid}"),
    output:
        directory(STITCHED),
    log:
        f"{LOGS}/stitch/{{eid}}.log",
    benchmark:
        f"{BENCHMARKS}/stitch/{{eid}}.tsv"
    conda:
        "../../envs/ageatlas.yaml"
    threads: 1
    resources:
        mem_mb=memory(2000),
        runtime=grows(10),
    params:
        stitch=config["stitch"],
    script:
        "../scripts/ingest/stitch.py"
