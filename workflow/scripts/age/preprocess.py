"""Stitched water -> normalised float16 training cache, for one batch of participants."""

from ageatlas.age.preprocess import prepare
from ageatlas.core.batch_run import Task, run_for_rule
from ageatlas.core.paths import stitched_path

params = snakemake.params
cfg = params.preprocess
tasks = []
for eid in params.eids:
    water, cache = (
        str(stitched_path(params.stitched.format(eid=eid), eid, "W")),
        params.cache.format(eid=eid),
    )
    kwargs = dict(
        water_path=water,
        out_path=cache,
        downsample_factor=cfg["downsample"],
        background=cfg["background"],
    )
    tasks.append(Task(eid, (water,), (cache,), kwargs))
run_for_rule(snakemake, prepare, tasks, cfg)
