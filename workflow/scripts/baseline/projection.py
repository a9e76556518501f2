"""Stitched water and fat -> 2.5D projections (.npy) and a PNG preview, for one batch of
participants."""

from ageatlas.baseline.projection import ProjectionOptions, project_participant
from ageatlas.core.batch_run import Task, run_for_rule

params = snakemake.params
options = ProjectionOptions.from_config(params.projection)
tasks = []
for eid in params.eids:
    stitched, out = params.stitched.format(eid=eid), params.out.format(eid=eid)
    preview = out.removesuffix(".npy") + ".png"
    kwargs = dict(
        stitched_dir=stitched, eid=eid, out_path=out, preview_path=preview, options=options
    )
    tasks.append(Task(eid, (stitched,), (out, preview), kwargs))
run_for_rule(snakemake, project_participant, tasks, params.projection)
