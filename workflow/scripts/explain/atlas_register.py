"""Register one group's atlas members to its current template (one iteration); keep each warped
image."""

from ageatlas.core.batch_run import Task, run_for_rule
from ageatlas.core.paths import stitched_path
from ageatlas.explain.registration_jobs import register_atlas_member

params, wildcards = snakemake.params, snakemake.wildcards
template = snakemake.input.template
pooled = not snakemake.resources.get("gpu", 0)  # on a GPU: one process, in turn
tasks = []
for eid in params.eids:
    water = str(stitched_path(params.stitched.format(eid=eid), eid, "W"))
    out = params.out.format(group=wildcards.group, iteration=wildcards.iteration, eid=eid)
    outputs = (f"{out}.pt", f"{out}.json", f"{out}.nii.gz")
    kwargs = dict(
        eid=eid,
        water=water,
        template=template,
        transform_out=outputs[0],
        record_out=outputs[1],
        warped_out=outputs[2],
        section=params.registration,
        torch_threads=1 if pooled else snakemake.threads,
    )
    tasks.append(Task(eid, (water, template), outputs, kwargs))
run_for_rule(snakemake, register_atlas_member, tasks, params.registration, pooled=pooled)
