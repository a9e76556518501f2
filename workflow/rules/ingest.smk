# One job per batch of participants (config batch.size): field-20201 zips ->
# stitched water/fat NIfTI, each participant in its own folder. The folder
# always holds qc.json; the images only when the participant passed (see
# docs/design.md, "Broken participants" and "Batches").


rule stitch:
    input:
        zips=lambda wc: stitch_zips(wc) if ZIP_INPUTS else [],
    output:
        STITCH_MANIFEST,
    log:
        f"{LOGS}/stitch/batch_{{batch}}.log",
    benchmark:
        f"{BENCHMARKS}/stitch/batch_{{batch}}.tsv"
    conda:
        "../../envs/ageatlas.yaml"
    threads: BATCH["threads"]
    resources:
        **batch_resources("stitch"),
    params:
        stitch=config["stitch"],
        eids=stitch_members,
        zips=stitch_zips,
        zip_state=stitch_zip_state,
        stitched=literal(STITCHED),
        records=batch_records(f"{RESULTS}/{paths.INGEST}", "stitch"),
        logs=f"{LOGS}/stitch",
    script:
        "../scripts/ingest/stitch.py"
