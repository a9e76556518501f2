"""Warp one batch of a group's attribution maps into its atlas with their registrations."""

from ageatlas.core.batch_run import Task, run_for_rule
from ageatlas.explain.registration_jobs import warp_map

params, group, atlas = snakemake.params, snakemake.wildcards.group, snakemake.input.atlas
tasks = []
for eid in params.eids:
    gradcam = params.gradcam.format(eid=eid)
    transform = params.registration.format(group=group, eid=eid)
    out = params.out.format(group=group, eid=eid)
    kwargs = dict(eid=eid, gradcam=gradcam, transform=transform, atlas=atlas, out=out)
    tasks.append(Task(eid, (gradcam, transform, atlas), (out,), {**kwargs, "torch_threads": 1}))
run_for_rule(snakemake, warp_map, tasks, {"warp": "linear, NaN outside the field of view"})
