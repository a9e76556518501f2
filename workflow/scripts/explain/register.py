"""Register one batch of a group's test participants to its atlas (affine, then SVFFD) and judge
each."""

from ageatlas.core.batch_run import Task, run_for_rule
from ageatlas.core.paths import stitched_path
from ageatlas.explain.registration_jobs import register_to_atlas

params, group = snakemake.params, snakemake.wildcards.group
pooled = not snakemake.resources.get("gpu", 0)  # on a GPU: one process, in turn
tasks = []
for eid in params.eids:
    water = str(stitched_path(params.stitched.format(eid=eid), eid, "W"))
    out = params.out.format(group=group, eid=eid)
    kwargs = dict(
        eid=eid,
        group=group,
        water=water,
        atlas=snakemake.input.atlas,
        transform_out=f"{out}.pt",
        record_out=f"{out}.json",
        section=params.registration,
        built_atlas=params.built_atlas,
        torch_threads=1 if pooled else snakemake.threads,
    )
    tasks.append(Task(eid, (water, snakemake.input.atlas), (f"{out}.pt", f"{out}.json"), kwargs))
run_for_rule(snakemake, register_to_atlas, tasks, params.registration, pooled=pooled)
