"""Register one batch of a group's test participants to its atlas (affine, then SVFFD) and judge
each."""

from ageatlas.core.batch_run import Task, run_for_rule
from ageatlas.core.paths import stitched_path
from ageatlas.explain.registration_jobs import register_to_atlas

params, group = snakemake.params, snakemake.wildcards.group
pooled = not snakemake.resources.get("gpu", 0)  # on a GPU: one process, in turn
tasks = []
atlas = list(snakemake.input.atlas)  # one file per registration channel
for eid in params.eids:
    channels = params.registration["channels"]
    images = [str(stitched_path(params.stitched.format(eid=eid), eid, c)) for c in channels]
    out = params.out.format(group=group, eid=eid)
    kwargs = dict(
        eid=eid,
        group=group,
        images=images,
        atlas=atlas,
        transform_out=f"{out}.pt",
        record_out=f"{out}.json",
        section=params.registration,
        built_atlas=params.built_atlas,
        torch_threads=1 if pooled else snakemake.threads,
    )
    tasks.append(Task(eid, (*images, *atlas), (f"{out}.pt", f"{out}.json"), kwargs))
run_for_rule(snakemake, register_to_atlas, tasks, params.registration, pooled=pooled)
