"""Register one group's atlas members to its current template (one iteration); keep each warped
image (one per registration channel)."""

from ageatlas.core.batch_run import Task, run_for_rule
from ageatlas.core.paths import channel_files, stitched_path
from ageatlas.explain.registration_jobs import register_atlas_member

params, wildcards = snakemake.params, snakemake.wildcards
channels = params.registration["channels"]
template = list(snakemake.input.template)
pooled = not snakemake.resources.get("gpu", 0)  # on a GPU: one process, in turn
tasks = []
for eid in params.eids:
    images = [str(stitched_path(params.stitched.format(eid=eid), eid, c)) for c in channels]
    out = params.out.format(group=wildcards.group, iteration=wildcards.iteration, eid=eid)
    warped = channel_files(f"{out}.nii.gz", channels)
    outputs = (f"{out}.pt", f"{out}.json", *warped)
    kwargs = dict(
        eid=eid,
        images=images,
        template=template,
        transform_out=outputs[0],
        record_out=outputs[1],
        warped_out=warped,
        section=params.registration,
        torch_threads=1 if pooled else snakemake.threads,
    )
    tasks.append(Task(eid, (*images, *template), outputs, kwargs))
run_for_rule(snakemake, register_atlas_member, tasks, params.registration, pooled=pooled)
