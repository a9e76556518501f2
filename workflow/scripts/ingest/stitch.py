"""Zips -> stitched NIfTI for one batch of participants; data defects end in qc.json, not a
failure."""

from ageatlas.core.batch_run import Task, run_for_rule
from ageatlas.ingest.participant import QC_FILE, ingest_participant, settings_from_config

params = snakemake.params
grid, options, preview = settings_from_config(params.stitch)
tasks = []
for eid, zip_path in zip(params.eids, params.zips):
    out_dir = params.stitched.format(eid=eid)
    kwargs = dict(
        eid=eid, zip_path=zip_path, out_dir=out_dir, grid=grid, options=options, preview=preview
    )
    tasks.append(Task(eid, (zip_path,), (f"{out_dir}/{QC_FILE}",), kwargs))
run_for_rule(snakemake, ingest_participant, tasks, params.stitch)
